"""MNIST-style digit input from any picture of a digit: ink extraction, then MNIST's own framing.

    to_ink(img)                     PIL image -> (H, W) float32 ink map in [0, 1], 1 = ink
    mnist_normalise(ink)            ink map -> (28, 28) float32, MNIST framing (20x20 box, centre of mass at 14,14)
    digit_tensor(img)               PIL image -> (1, 28, 28) tensor, MNIST_MEAN/MNIST_STD normalised

How the ink is found (docs/digits.md gives the measurements behind each choice):
1. Polarity and paper level from the outer frame's median: a digit that touches or crosses the edges still
   leaves most of the frame to the paper.
2. The background (paper or board, uneven light included) is a grey opening of the image with the ink made
   bright: a minimum then a maximum over a window half the image's longer side, wider than any stroke. It needs
   no clean frame, so ink on one to four edges does not move it.
3. The noise level comes from neighbour differences, which ink on the frame does not inflate.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from app.core.errors import BadInput
from app.preprocessing.decoding import SIXTEEN_BIT_MODES, has_alpha, luminance
from models.digits import MNIST_MEAN, MNIST_STD

DIGIT_SIZE, DIGIT_BOX = 28, 20
DIGIT_CENTRE = 14.0  # MNIST's mean centre of mass, in pixel-index coordinates
DIGIT_MAX_SIDE = 1024  # larger photos are box-reduced before ink extraction (speed, memory)

INK_MIN_CONTRAST = 0.05  # ink must differ from the background by at least this much (of full scale)
INK_NOISE_SIGMAS = 4.0  # ... and by this many standard deviations of the background's noise
BACKGROUND_GRID = 64  # the background is estimated on a copy at most this many pixels on its longer side
BACKGROUND_WINDOW = 0.5  # opening window, as a share of the longer side: wider than a stroke
BACKGROUND_REFITS = 3
NOISE_SAMPLE_SIDE = 96  # the noise is measured on about this many rows and columns
MIN_BACKGROUND_LUMINANCE = 0.1  # contrast is relative to the background, which on a black screen is ~0
EVEN_LIGHT_SPREAD = 0.1  # a background whose light varies less than this is taken as evenly lit
BBOX_THRESHOLD = 0.1  # ink level that counts for the digit's bounding box
MIN_STROKE = 1.2  # px of the 20 px box: thinner strokes (MNIST's 5th percentile) are widened
THIN_STROKE_TARGET = 1.8  # ... to about MNIST's median
MAX_STROKE = 3.0  # ... thicker ones (MNIST's 97th percentile) are narrowed
THICK_STROKE_TARGET = 2.4  # ... to this
STROKE_PASSES = 2


# --------------------------------------------------------------------------------------------- ink

def to_ink(img: Image.Image) -> np.ndarray:
    """(H, W) float32 in [0, 1], 1 = ink, for dark-on-light, light-on-dark and alpha-only images."""
    lum = luminance(img)
    light = _ink_is_light(lum)
    bright_ink = lum if light else 1.0 - lum
    background = _background(bright_ink)
    ink = (bright_ink - background) / _relative_light(background if light else 1.0 - background)
    threshold = max(INK_NOISE_SIGMAS * _noise(ink), INK_MIN_CONTRAST)
    if float(ink.max()) <= threshold:
        raise BadInput(_no_strokes_message(lum))
    return _clean_ink(ink, threshold)


def _relative_light(background_luminance: np.ndarray) -> np.ndarray:
    """Light falls on paper and ink alike, so a stroke's contrast scales with the light where it lies: dividing by
    the background's luminance relative to its median gives a digit half in shadow strokes of one strength
    (and changes nothing under even light)."""
    light = np.maximum(background_luminance, MIN_BACKGROUND_LUMINANCE)
    relative = light / float(np.median(light))
    if float(relative.max() - relative.min()) < EVEN_LIGHT_SPREAD:
        return np.ones_like(relative)  # even light: the fit's wobble is not a shadow
    return relative


def _no_strokes_message(lum: np.ndarray) -> str:
    spread = float(np.percentile(lum, 99.5) - np.percentile(lum, 0.5))
    if spread < 2 * INK_MIN_CONTRAST:
        return (f"no digit found: the image is uniform (its brightness varies by only {spread:.0%}), so no strokes "
                "were found; draw or photograph a digit with clear strokes")
    return ("no digit found: nothing in the image stands out from its background the way pen or chalk strokes do; "
            "send a digit with clear strokes on a plain background")


def _frame_width(shape: tuple[int, int]) -> int:
    return max(1, min(shape) // 32)  # about 3% of the short side, at least 1 px


def _frame(arr: np.ndarray) -> np.ndarray:
    """The pixels of the outer frame."""
    k = _frame_width(arr.shape)
    return np.concatenate([arr[:k].ravel(), arr[-k:].ravel(), arr[k:-k, :k].ravel(), arr[k:-k, -k:].ravel()])


def _noise(arr: np.ndarray) -> float:
    """Standard deviation of pixel noise from neighbour differences (median |dx|, |dy| / (0.6745 sqrt 2)):
    strokes and light gradients change slowly, so their edges are a minority of the differences."""
    if min(arr.shape) < 2:
        return 0.0
    step = max(1, math.ceil(min(arr.shape) / NOISE_SAMPLE_SIDE))  # every step-th row and column: plenty of pairs
    rows, cols = arr[::step], arr[:, ::step]
    diffs = np.concatenate([np.abs(np.diff(cols, axis=0)).ravel(), np.abs(np.diff(rows, axis=1)).ravel()])
    return float(np.median(diffs)) / (0.6745 * math.sqrt(2.0))


def _ink_is_light(lum: np.ndarray) -> bool:
    """Polarity: which side of the frame's median level carries more contrast mass beyond the noise."""
    signed = lum - float(np.median(_frame(lum)))
    threshold = max(INK_NOISE_SIGMAS * _noise(lum), INK_MIN_CONTRAST)
    light = np.clip(signed - threshold, 0.0, None).sum()
    dark = np.clip(-signed - threshold, 0.0, None).sum()
    return bool(light > dark)


def _background(bright_ink: np.ndarray) -> np.ndarray:
    """A smooth surface (constant, plane or quadratic) fitted to the background pixels of a reduced copy.
    A grey opening (min, then max, over a window wider than a stroke) gives the first guess of which pixels are
    paper wherever the ink lies; each refit then drops the pixels that stand out from the last surface (a blob of
    ink wider than the window). The surface has no border artefacts and no holes behind strokes."""
    h, w = bright_ink.shape
    factor = max(1, math.ceil(max(h, w) / BACKGROUND_GRID))
    small = _mean_pool(bright_ink, factor)
    threshold = max(INK_NOISE_SIGMAS * _noise(small), INK_MIN_CONTRAST)
    k = max(3, int(BACKGROUND_WINDOW * max(small.shape)) | 1)
    surface = _rank_filter(_rank_filter(small, k, np.min), k, np.max)
    ys, xs = np.mgrid[0:small.shape[0], 0:small.shape[1]].astype(np.float32)
    ys, xs = (ys + 0.5) * factor - 0.5, (xs + 0.5) * factor - 0.5  # cell centres in full-size pixels
    for _ in range(BACKGROUND_REFITS):
        paper = small - surface <= threshold
        if not paper.any():
            break
        order = _surface_order(paper)
        coef = _least_squares(_surface_terms(ys, xs, h, w, order)[paper], small[paper])
        surface = _surface_terms(ys, xs, h, w, order) @ coef
    # the same terms at full size, by broadcasting a column of y against a row of x (no (h, w, terms) array)
    y = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None] if h > 1 else np.full((1, 1), -1.0, np.float32)
    x = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :] if w > 1 else np.full((1, 1), -1.0, np.float32)
    terms = [np.ones((1, 1), np.float32), x, y, x * x, x * y, y * y][:len(coef)]
    return sum(c * t for c, t in zip(coef, terms)) + np.zeros((h, w), np.float32)


def _least_squares(terms: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Normal equations for at most six terms (far cheaper than an SVD here; the terms are well scaled in [-1, 1])."""
    a = terms.astype(np.float64)
    gram = a.T @ a + 1e-9 * np.eye(a.shape[1])
    return np.linalg.solve(gram, a.T @ values.astype(np.float64)).astype(np.float32)


def _surface_order(paper: np.ndarray) -> int:
    """Fewer background pixels, a simpler surface: a quadratic needs them spread over most of the image."""
    share = float(paper.mean())
    return 2 if share >= 0.5 else 1 if share >= 0.15 else 0


def _surface_terms(ys: np.ndarray, xs: np.ndarray, h: int, w: int, order: int) -> np.ndarray:
    y, x = (2 * ys / max(h - 1, 1) - 1).ravel(), (2 * xs / max(w - 1, 1) - 1).ravel()
    terms = [np.ones_like(x)]
    if order >= 1:
        terms += [x, y]
    if order >= 2:
        terms += [x * x, x * y, y * y]
    return np.stack(terms, axis=1).reshape(*ys.shape, len(terms))


def _mean_pool(arr: np.ndarray, factor: int) -> np.ndarray:
    if factor < 2:
        return arr
    h, w = arr.shape
    padded = np.pad(arr, ((0, -h % factor), (0, -w % factor)), mode="edge")
    ph, pw = padded.shape
    return padded.reshape(ph // factor, factor, pw // factor, factor).mean(axis=(1, 3))


def _rank_filter(arr: np.ndarray, k: int, reduce) -> np.ndarray:
    """Centred k x k min or max filter (separable), edges replicated."""
    r = k // 2
    rows = reduce(sliding_window_view(np.pad(arr, ((r, r), (0, 0)), mode="edge"), k, axis=0), axis=-1)
    return reduce(sliding_window_view(np.pad(rows, ((0, 0), (r, r)), mode="edge"), k, axis=1), axis=-1)


def _clean_ink(ink: np.ndarray, threshold: float) -> np.ndarray:
    """Drop sub-threshold haze and isolated specks, then stretch so the strongest ink is 1."""
    mask = ink > threshold
    mask &= _box3_count(mask) >= 3  # a speck of one or two pixels is noise, a stroke is not
    if not mask.any():
        raise BadInput("no digit found: only a few isolated specks stand out from the background, no strokes; "
                       "send a digit with clear strokes on a plain background")
    peak = float(ink[mask].max())
    out = np.clip((ink - threshold) / max(peak - threshold, 1e-6), 0.0, 1.0) * mask
    return out.astype(np.float32, copy=False)


def _box3_count(mask: np.ndarray) -> np.ndarray:
    """How many pixels of each 3x3 neighbourhood are set."""
    p = np.pad(mask.astype(np.uint8), 1)
    rows = p[:-2] + p[1:-1] + p[2:]
    return rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]


# --------------------------------------------------------------------------------------------- framing

def digit_tensor(img: Image.Image) -> torch.Tensor:
    """(1, 28, 28) float32 MNIST-style input: ink, cropped, 20x20 box, centred by mass, normalised."""
    digit = mnist_normalise(to_ink(_shrink(img, DIGIT_MAX_SIDE)))
    return ((torch.from_numpy(digit) - MNIST_MEAN) / MNIST_STD).unsqueeze(0)


def mnist_normalise(ink: np.ndarray) -> np.ndarray:
    """Ink map -> (28, 28) float32 in [0, 1] framed like MNIST (LeCun et al.): cropped to the ink, scaled so
    the longer side is 20 px, pasted into 28x28 with the centre of mass at (14, 14)."""
    crop = _crop_to_ink(np.asarray(ink, dtype=np.float32))
    crop = _max_pool(crop, max(crop.shape) // (4 * DIGIT_BOX))  # a thin stroke keeps >= 1 px at 4x the box
    for _ in range(STROKE_PASSES):  # the width measure undercounts short strokes: a second pass finishes the job
        crop = _normalise_stroke(crop, max(crop.shape) / DIGIT_BOX)
    patch = _fit_box(crop, DIGIT_BOX)
    return _place_by_mass(patch, DIGIT_SIZE, DIGIT_CENTRE)


def _crop_to_ink(ink: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero((ink > BBOX_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((ink > BBOX_THRESHOLD).any(axis=0))
    if rows.size == 0:
        raise BadInput("no digit found: nothing in the image stands out from its background")
    return np.clip(ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], 0.0, 1.0)


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
    return _max_filter(crop, k) if width < MIN_STROKE else _crop_to_ink(_min_filter(crop, k))


def _stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width in pixels: twice the area over the length of the outline (0 when there is no stroke)."""
    area = int(mask.sum())
    if area == 0:
        return 0.0
    m = np.pad(mask, 1)
    outline = int(np.count_nonzero(m[:, 1:] != m[:, :-1]) + np.count_nonzero(m[1:] != m[:-1]))
    return 2.0 * area / outline


def _max_filter(arr: np.ndarray, k: int) -> np.ndarray:
    """Grey dilation with a k x k square; the result grows by k - 1 pixels in each dimension."""
    padded = np.pad(arr, k - 1)
    rows = sliding_window_view(padded, k, axis=0).max(axis=-1)
    return sliding_window_view(rows, k, axis=1).max(axis=-1)


def _min_filter(arr: np.ndarray, k: int) -> np.ndarray:
    """Grey erosion with a k x k square, same size out (outside counts as no ink)."""
    lo, hi = (k - 1) // 2, k // 2
    padded = np.pad(arr, ((lo, hi), (lo, hi)))
    rows = sliding_window_view(padded, k, axis=0).min(axis=-1)
    return sliding_window_view(rows, k, axis=1).min(axis=-1)


def _fit_box(crop: np.ndarray, box: int) -> np.ndarray:
    """Resize so the longer side is `box`, keeping the aspect ratio (antialiased)."""
    h, w = crop.shape
    scale = box / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size != (w, h):
        resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
        crop = np.asarray(Image.fromarray(crop, mode="F").resize(size, resample), dtype=np.float32)
    crop = np.clip(crop, 0.0, 1.0)
    peak = float(crop.max())
    return crop / peak if peak > 0 else crop  # downsampling dims thin strokes: restore full strength


def _max_pool(arr: np.ndarray, factor: int) -> np.ndarray:
    if factor < 2:
        return arr
    h, w = arr.shape
    padded = np.pad(arr, ((0, -h % factor), (0, -w % factor)))
    ph, pw = padded.shape
    return padded.reshape(ph // factor, factor, pw // factor, factor).max(axis=(1, 3))


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


__all__ = ["to_ink", "mnist_normalise", "digit_tensor"]
