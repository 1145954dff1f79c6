"""Training-set variants of MNIST digits framed the ways the server meets them, re-framed as the server frames them.

The server crops a digit to its ink, fits it to MNIST's 20 px box and centres it by mass (the same
`mnist_normalise`). A digit drawn off the canvas edge loses a strip of ink before that; a marker or a fine pen
changes the stroke width. Each variant takes a training digit, enlarges it, changes one of those things at random,
and re-frames it, so the networks see what the server will hand them:

    cut      1-4 edges of the ink box cut off, up to 12 % of the digit in all
    stroke   strokes widened or narrowed (a marker, a fine pen), before the server's own stroke normalisation
    both     a cut of a re-stroked digit

Drawn variants (`drawn_variants`) go one step further: the digit is drawn as a user would send it, dark ink on
paper at 80-320 px, and read by the server's whole pipeline (`to_ink`: polarity, background, noise, then
`mnist_normalise` with its stroke normalisation at that size):

    edge         drawn past 1-4 canvas edges, 1-12 % of the digit cut off at each (half that at opposite edges)
    marker       strokes 2.6-4.5 px wide in MNIST's 20 px box (the server narrows them to 2.4)
    pen          strokes 0.6-1.2 px wide (the server widens them to 1.8)
    marker_edge, pen_edge   both

Only training images are used (never the test set, never the calibration slice).
"""
from __future__ import annotations

import hashlib
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from tqdm import tqdm

from preprocessing.digits import mnist_normalise
from preprocessing.ink import to_ink
from preprocessing.errors import UndecodableInput

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
    return trimmed(ink, (top, bottom, left, right), edges, shares)


def trimmed(ink: np.ndarray, box: tuple[int, int, int, int], edges, shares) -> np.ndarray:
    """`ink` inside `box` (top, bottom, left, right) with each of `edges` (0 top, 1 bottom, 2 left, 3 right) moved
    in by its share of the box's extent."""
    top, bottom, left, right = box
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


# ------------------------------------------------------------------------------------------------ drawn variants

DRAWN_KINDS = ("edge", "marker", "pen", "marker_edge", "pen_edge")
DRAWN_P = (0.4, 0.15, 0.15, 0.15, 0.15)


def scaled_box(digit: np.ndarray, longer: int) -> np.ndarray:
    """The digit's ink box as a float ink map whose longer side is `longer` px (bicubic, aspect kept)."""
    rows, cols = np.flatnonzero(digit.max(axis=1) > 0), np.flatnonzero(digit.max(axis=0) > 0)
    box = digit[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.float32) / 255.0
    h, w = box.shape
    s = longer / max(h, w)
    img = Image.fromarray(box, mode="F").resize((max(1, round(w * s)), max(1, round(h * s))),
                                                 Image.Resampling.BICUBIC)
    return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)


def stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width in px: twice the area over the outline's length."""
    m = np.pad(mask, 1)
    outline = np.count_nonzero(m[:, 1:] != m[:, :-1]) + np.count_nonzero(m[1:] != m[:-1])
    return 2.0 * mask.sum() / max(outline, 1)


def square_filter(ink: np.ndarray, k: int, reduce) -> np.ndarray:
    """Grey dilation (np.max) or erosion (np.min) with a k x k square (k odd), same size, no ink outside;
    separable, so a marker's 40 px square costs what a 3 px one does."""
    out = np.pad(ink, k // 2)
    out = reduce(np.lib.stride_tricks.sliding_window_view(out, k, axis=0), axis=-1)
    return np.ascontiguousarray(reduce(np.lib.stride_tricks.sliding_window_view(out, k, axis=1), axis=-1))


def pen_width(ink: np.ndarray, box_width: float) -> np.ndarray:
    """Strokes dilated or eroded to about `box_width` px of MNIST's 20 px box, softened as ink on paper is."""
    change = box_width * max(ink.shape) / 20 - stroke_width(ink > 0.5)
    size = int(round(abs(change))) + 1
    if size < 2:
        return ink
    out = square_filter(ink, size | 1, np.max if change > 0 else np.min)
    img = Image.fromarray(np.round(out * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(size / 6))
    out = np.asarray(img, dtype=np.float32) / 255.0
    return np.clip(out / out.max(), 0.0, 1.0) if out.max() > 0.5 else ink  # an erosion that wiped it out


def cut_box(ink: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, set[int]]:
    """1-4 edges (0 top, 1 bottom, 2 left, 3 right) of the ink map cut off, as a canvas cuts a digit drawn past
    it: 1-12 % of the digit's extent at each edge, half that each when both opposite edges are cut."""
    h, w = ink.shape
    edges = [int(e) for e in rng.permutation(4)[: int(rng.integers(1, 5))]]
    shares = [rng.uniform(0.01, MAX_CUT) / (2 if (e ^ 1) in edges else 1) for e in edges]
    return trimmed(ink, (0, h, 0, w), edges, shares), set(edges)


def on_paper(ink: np.ndarray, rng: np.random.Generator, cut: set[int]) -> Image.Image:
    """Dark ink on light paper (grey levels and noise at random), a margin on every edge that was not cut."""
    h, w = ink.shape
    pad = [0 if e in cut else int(rng.uniform(0.03, 0.3) * max(h, w)) for e in range(4)]
    canvas = np.zeros((h + pad[0] + pad[1], w + pad[2] + pad[3]), np.float32)
    canvas[pad[0]:pad[0] + h, pad[2]:pad[2] + w] = ink
    paper, pen = rng.uniform(0.8, 1.0), rng.uniform(0.0, 0.3)
    lum = paper - (paper - pen) * canvas + rng.normal(0, 0.01, canvas.shape)
    return Image.fromarray(np.round(np.clip(lum, 0.0, 1.0) * 255).astype(np.uint8), mode="L")


def drawn_variant(digit: np.ndarray, rng: np.random.Generator, attempt: int = 0) -> np.ndarray:
    """The digit drawn on paper (cut by the edges, or with a marker or a fine pen) and read as the server reads an
    upload: uint8 28x28, MNIST-framed."""
    kind = DRAWN_KINDS[rng.choice(len(DRAWN_KINDS), p=DRAWN_P)]
    ink = scaled_box(digit, int(rng.integers(80, 321)))
    if "marker" in kind:
        ink = pen_width(ink, rng.uniform(2.6, 4.5))
    elif "pen" in kind:
        ink = pen_width(ink, rng.uniform(0.6, 1.2))
    cut: set[int] = set()
    if "edge" in kind:
        ink, cut = cut_box(ink, rng)
    try:
        return np.round(mnist_normalise(to_ink(on_paper(ink, rng, cut))) * 255).astype(np.uint8)
    except UndecodableInput:  # what the server would refuse (faint ink, a cut that left specks): draw it again
        return variant(digit, rng) if attempt >= 3 else drawn_variant(digit, rng, attempt + 1)


# ------------------------------------------------------------------------------------------------ sets

def framing_variants(images: np.ndarray, per_image: int, seed: int, progress: bool = True,
                     cache_dir: Path | None = CACHE_DIR, drawn: bool = False, workers: int = 1) -> np.ndarray:
    """`per_image` variants of each image, in order (N * per_image, 28, 28) uint8; cached, as they take minutes.
    `drawn`: drawn_variant (through the server's to_ink) instead of variant. The result does not depend on
    `workers` (each block of images has its own seeded generator when drawn)."""
    code = b"".join(Path(f).read_bytes() for f in (__file__, mnist_normalise.__code__.co_filename,
                                                     to_ink.__code__.co_filename))
    key = hashlib.sha256(images.tobytes() + code + f"{per_image},{seed},{drawn}".encode()).hexdigest()
    cached = cache_dir / f"mnist-{'drawn' if drawn else 'framing'}-{key[:16]}.npy" if cache_dir else None
    if cached and cached.exists():
        return np.load(cached)
    out = _drawn_variants(images, per_image, seed, progress, workers) if drawn else \
        _variants(images, per_image, seed, progress)
    if cached:
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.save(cached, out)
    return out


DRAWN_BLOCK = 2500


def _drawn_block(job: tuple[np.ndarray, int, int, int]) -> np.ndarray:
    images, per_image, seed, start = job
    rng = np.random.default_rng([seed, start])
    return np.stack([drawn_variant(digit, rng) for digit in images for _ in range(per_image)])


def _drawn_variants(images: np.ndarray, per_image: int, seed: int, progress: bool, workers: int) -> np.ndarray:
    jobs = [(images[s:s + DRAWN_BLOCK], per_image, seed, s) for s in range(0, len(images), DRAWN_BLOCK)]
    bar = tqdm(total=len(images), desc="drawn variants", disable=not progress)
    parts = []
    if workers > 1:
        with get_context("spawn").Pool(workers) as pool:
            for part in pool.imap(_drawn_block, jobs):
                parts.append(part)
                bar.update(len(part) // per_image)
    else:
        for job in jobs:
            parts.append(_drawn_block(job))
            bar.update(len(job[0]))
    bar.close()
    return np.concatenate(parts)


def _variants(images: np.ndarray, per_image: int, seed: int, progress: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((len(images) * per_image, 28, 28), dtype=np.uint8)
    for i, digit in enumerate(tqdm(images, desc="framing variants", disable=not progress)):
        for k in range(per_image):
            out[i * per_image + k] = variant(digit, rng)
    return out
