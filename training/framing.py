"""Training-set variants of MNIST digits framed the ways the server meets them, re-framed as the server frames them.

The server crops a digit to its ink, fits it to MNIST's 20 px box and centres it by mass (the same
`mnist_normalise`). A digit drawn off the canvas edge loses a strip of ink before that; a marker or a fine pen
changes the stroke width. Each variant takes a training digit, enlarges it, changes one of those things at random,
and re-frames it, so the networks see what the server will hand them:

    cut      1-4 edges of the ink box cut off, up to 12 % of the digit in all
    stroke   strokes widened or narrowed (a marker, a fine pen), before the server's own stroke normalisation
    both     a cut of a re-stroked digit

Only training images are used (never the test set, never the calibration slice).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from tqdm import tqdm

from app.preprocessing.digits import mnist_normalise

SCALE = 4  # digits are re-stroked and cut at 4x MNIST's resolution, as a bigger drawing would be
CACHE_DIR = Path(__file__).resolve().parents[1] / "var" / "cache"
MAX_CUT = 0.12  # of the digit's extent in all, a little more than the server's target renderings


def enlarged(digit: np.ndarray) -> np.ndarray:
    """uint8 28x28 -> float ink map (112, 112) in [0, 1]."""
    img = Image.fromarray(digit).resize((28 * SCALE, 28 * SCALE), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(img, dtype=np.float32) / 255.0, 0.0, 1.0)


def restroked(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Grey dilation (a marker) or erosion (a fine pen) by 1-2 px of the 28 px digit."""
    size = 2 * int(rng.integers(1, SCALE + 1)) + 1
    img = Image.fromarray(np.round(ink * 255).astype(np.uint8))
    img = img.filter(ImageFilter.MaxFilter(size) if rng.random() < 0.6 else ImageFilter.MinFilter(size))
    out = np.asarray(img, dtype=np.float32) / 255.0
    return out if out.max() > 0.5 else ink  # an erosion that wiped the digit out keeps the original


def cut(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cut 1-4 edges of the ink box off, as a canvas edge does to a digit drawn past it."""
    rows = np.flatnonzero(ink.max(axis=1) > 0.1)
    cols = np.flatnonzero(ink.max(axis=0) > 0.1)
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    edges = rng.permutation(4)[: int(rng.integers(1, 5))]
    total = rng.uniform(0.02, MAX_CUT)
    shares = rng.dirichlet(np.ones(len(edges))) * total
    h, w = bottom - top, right - left
    for edge, share in zip(edges, shares):
        if edge == 0:
            top += int(share * h)
        elif edge == 1:
            bottom -= int(share * h)
        elif edge == 2:
            left += int(share * w)
        else:
            right -= int(share * w)
    return ink[top:bottom, left:right]


def variant(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One reframed variant of a uint8 28x28 training digit -> uint8 28x28, MNIST-framed."""
    ink = enlarged(digit)
    kind = rng.choice(["cut", "stroke", "both"], p=[0.45, 0.35, 0.2])
    if kind in ("stroke", "both"):
        ink = restroked(ink, rng)
    if kind in ("cut", "both"):
        ink = cut(ink, rng)
    return np.round(mnist_normalise(ink) * 255).astype(np.uint8)


def framing_variants(images: np.ndarray, per_image: int, seed: int, progress: bool = True,
                     cache_dir: Path | None = CACHE_DIR) -> np.ndarray:
    """`per_image` variants of each image, in order (N * per_image, 28, 28) uint8; cached, as they take minutes."""
    code = Path(__file__).read_bytes() + Path(mnist_normalise.__code__.co_filename).read_bytes()
    key = hashlib.sha256(images.tobytes() + code + f"{per_image},{seed}".encode()).hexdigest()
    cached = cache_dir / f"mnist-framing-{key[:16]}.npy" if cache_dir else None
    if cached and cached.exists():
        return np.load(cached)
    out = _variants(images, per_image, seed, progress)
    if cached:
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.save(cached, out)
    return out


def _variants(images: np.ndarray, per_image: int, seed: int, progress: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((len(images) * per_image, 28, 28), dtype=np.uint8)
    for i, digit in enumerate(tqdm(images, desc="framing variants", disable=not progress)):
        for k in range(per_image):
            out[i * per_image + k] = variant(digit, rng)
    return out
