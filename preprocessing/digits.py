"""MNIST-style digit input from any picture of a digit: its ink (preprocessing/ink.py), then MNIST's own framing.

    mnist_normalise(ink)            ink map -> (28, 28) float32, MNIST framing (20x20 box, centre of mass at 14,14)
    digit_tensor(img)               PIL image -> (1, 28, 28) tensor: to_ink, mnist_normalise, MNIST_MEAN/MNIST_STD
    normalise_mnist_uint8(images)   uint8 (N, 28, 28) -> (N, 1, 28, 28) tensor, as digit_tensor normalises
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from models.digits import MNIST_MEAN, MNIST_STD
from preprocessing.arrays import max_filter, max_pool, min_filter, zero_padded
from preprocessing.decoding import SIXTEEN_BIT_MODES, has_alpha
from preprocessing.errors import UndecodableInput
from preprocessing.ink import to_ink

DIGIT_SIZE, DIGIT_BOX = 28, 20
DIGIT_CENTRE = 14.0  # MNIST's mean centre of mass, in pixel-index coordinates
DIGIT_MAX_SIDE = 1024  # larger photos are box-reduced before ink extraction (speed, memory)
BBOX_THRESHOLD = 0.1  # ink level that counts for the digit's bounding box
MIN_STROKE = 1.2  # px of the 20 px box: thinner strokes (MNIST's 5th percentile) are widened
THIN_STROKE_TARGET = 1.8  # ... to about MNIST's median
MAX_STROKE = 3.0  # ... thicker ones (MNIST's 97th percentile) are narrowed
THICK_STROKE_TARGET = 2.4  # ... to this
STROKE_PASSES = 2

def digit_tensor(img: Image.Image) -> torch.Tensor:
    """(1, 28, 28) float32 MNIST-style input: ink, cropped, 20x20 box, centred by mass, normalised."""
    digit = mnist_normalise(to_ink(_shrink(img, DIGIT_MAX_SIDE)))
    digit -= MNIST_MEAN
    digit /= MNIST_STD
    return torch.from_numpy(digit[None])


def normalise_mnist_uint8(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) MNIST-framed digits -> (N, 1, 28, 28) normalised float32 (shared with training)."""
    x = torch.from_numpy(np.asarray(images)).float().div_(255).unsqueeze(1)
    return (x - MNIST_MEAN) / MNIST_STD


def mnist_normalise(ink: np.ndarray) -> np.ndarray:
    """Ink map -> (28, 28) float32 in [0, 1] framed like MNIST (LeCun et al.): cropped to the ink, scaled so
    the longer side is 20 px, pasted into 28x28 with the centre of mass at (14, 14)."""
    crop = _crop_to_ink(np.asarray(ink, dtype=np.float32))
    crop = max_pool(crop, max(crop.shape) // (4 * DIGIT_BOX))  # a thin stroke keeps >= 1 px at 4x the box
    for _ in range(STROKE_PASSES):  # the width measure undercounts short strokes: a second pass finishes the job
        crop, before = _normalise_stroke(crop, max(crop.shape) / DIGIT_BOX), crop
        if crop is before:
            break  # left alone: another pass would measure the same width
    patch = _fit_box(crop, DIGIT_BOX)
    return _place_by_mass(patch, DIGIT_SIZE, DIGIT_CENTRE)


def _crop_to_ink(ink: np.ndarray) -> np.ndarray:
    inked = ink > BBOX_THRESHOLD
    rows = inked.any(axis=1).nonzero()[0]
    if rows.size == 0:
        raise UndecodableInput("no digit found: nothing in the image stands out from its background")
    cols = inked[rows[0]:rows[-1] + 1].any(axis=0).nonzero()[0]
    return ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].clip(0.0, 1.0)


def _normalise_stroke(crop: np.ndarray, px_per_box_px: float) -> np.ndarray:
    """Bring strokes into MNIST's range of widths: hair-thin ones (a fine pen on a big photo) are widened, marker-
    thick ones narrowed; the widths MNIST itself has are left alone, and so is a crop smaller than the box (its
    strokes are a pixel or two whatever the pen was)."""
    if max(crop.shape) < DIGIT_BOX:
        return crop
    width = _stroke_width(crop > 0.5) / px_per_box_px
    if width == 0.0 or MIN_STROKE <= width <= MAX_STROKE:
        return crop
    target = THIN_STROKE_TARGET if width < MIN_STROKE else THICK_STROKE_TARGET
    # Dilating or eroding by e pixels also changes the longer side by e, and so the scale of the box:
    # solve (w +- e) / (H +- e) = target / DIGIT_BOX for e.
    k = int(round(abs(width - target) * px_per_box_px / (1 - target / DIGIT_BOX))) + 1
    if k < 2:
        return crop
    return max_filter(crop, k) if width < MIN_STROKE else _crop_to_ink(min_filter(crop, k))


def _stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width in pixels: twice the area over the length of the outline (0 when there is no stroke)."""
    area = np.count_nonzero(mask)
    if area == 0:
        return 0.0
    m = zero_padded(mask, 1, 1)
    outline = np.count_nonzero(m[:, 1:] != m[:, :-1]) + np.count_nonzero(m[1:] != m[:-1])
    return 2.0 * area / outline


def _fit_box(crop: np.ndarray, box: int) -> np.ndarray:
    """Resize so the longer side is `box`, keeping the aspect ratio (antialiased)."""
    h, w = crop.shape
    scale = box / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size != (w, h):
        resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
        crop = np.asarray(Image.fromarray(crop, mode="F").resize(size, resample), dtype=np.float32)
    crop = crop.clip(0.0, 1.0)
    peak = float(crop.max())
    return crop / peak if peak > 0 else crop  # downsampling dims thin strokes: restore full strength


def _place_by_mass(patch: np.ndarray, size: int, centre: float) -> np.ndarray:
    """Paste `patch` into a size x size canvas with its centre of mass at (centre, centre), kept in frame."""
    h, w = patch.shape
    mass = float(patch.sum())
    cy = float((patch.sum(axis=1) * np.arange(h)).sum() / mass)
    cx = float((patch.sum(axis=0) * np.arange(w)).sum() / mass)
    top = min(max(round(centre - cy), 0), size - h)
    left = min(max(round(centre - cx), 0), size - w)
    canvas = np.zeros((size, size), dtype=np.float32)
    canvas[top:top + h, left:left + w] = patch
    return canvas


def _shrink(img: Image.Image, max_side: int) -> Image.Image:
    """Box-reduce very large images by an integer factor (cheap, keeps strokes as grey)."""
    factor = math.ceil(max(img.size) / max_side)
    if factor < 2:
        return img
    if img.mode in SIXTEEN_BIT_MODES:
        img = img.convert("I")
    elif img.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
        img = img.convert("RGBA" if has_alpha(img) else "RGB")
    return img.reduce(factor)
