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

This runs on the event loop for every digits request, and a 28x28 digit is a few hundred numpy calls on tiny
arrays, so the code avoids numpy's slow paths (np.pad, np.median, sliding windows, np.maximum with a scalar) and
caches per-size grids; each step gives the same values, bit for bit, as the plain numpy form it replaces.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from preprocessing.errors import UndecodableInput
from preprocessing.decoding import SIXTEEN_BIT_MODES, has_alpha, luminance
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
    lum_noise = _noise(lum)
    light = _ink_is_light(lum, lum_noise)
    bright_ink = lum if light else 1.0 - lum
    background = _background(bright_ink, lum_noise if light else None)  # its noise is known when it is lum
    ink = bright_ink - background
    relative = _relative_light(background if light else np.subtract(1.0, background, out=background))
    if relative is not None:
        ink /= relative
    threshold = max(INK_NOISE_SIGMAS * _noise(ink), INK_MIN_CONTRAST)
    if float(ink.max()) <= threshold:
        raise UndecodableInput(_no_strokes_message(lum))
    return _clean_ink(ink, threshold)


def _relative_light(background_luminance: np.ndarray) -> np.ndarray | None:
    """Light falls on paper and ink alike, so a stroke's contrast scales with the light where it lies: dividing by
    the background's luminance relative to its median gives a digit half in shadow strokes of one strength
    (None, nothing to divide by, under even light). Overwrites background_luminance."""
    light = background_luminance.clip(MIN_BACKGROUND_LUMINANCE, np.inf, out=background_luminance)
    low, high = float(light.min()), float(light.max())
    # the median lies in [low, high], so the spread is at most (high - low) / low (1e-5: float32 rounding)
    if (high - low) / low < EVEN_LIGHT_SPREAD - 1e-5:
        return None  # evenly lit, whatever the median: no need to find it
    median = np.float32(_median(light.ravel()))
    if float(np.float32(high) / median - np.float32(low) / median) < EVEN_LIGHT_SPREAD:
        return None  # even light: the fit's wobble is not a shadow
    light /= median
    return light


def _no_strokes_message(lum: np.ndarray) -> str:
    spread = float(np.percentile(lum, 99.5) - np.percentile(lum, 0.5))
    if spread < 2 * INK_MIN_CONTRAST:
        return (f"no digit found: the image is uniform (its brightness varies by only {spread:.0%}), so no strokes "
                "were found; draw or photograph a digit with clear strokes")
    return ("no digit found: nothing in the image stands out from its background the way pen or chalk strokes do; "
            "send a digit with clear strokes on a plain background")


_SAMPLE = np.sort(np.random.default_rng(0).random(2048))  # where to sample: random, as images have rows


def _median(values: np.ndarray) -> float:
    """np.median of a 1-D float array (NaN included). np.partition, which np.median uses, is slow on the many
    equal values of clean images (up to 20x); sorting is not, and for a large array only the values between
    two quantiles of a random sample need sorting, once counting shows that they bracket the median."""
    n, offset = values.size, 0
    if n > 8192:
        sample = np.sort(values.take((_SAMPLE * n).astype(np.intp)))
        lo, hi = sample[len(sample) * 15 // 32], sample[len(sample) * 17 // 32]
        up_to_hi = values <= hi
        below, upto = np.count_nonzero(values < lo), np.count_nonzero(up_to_hi)
        if below <= (n - 1) // 2 and n // 2 < upto:  # both middle ranks lie in [lo, hi]
            if math.isnan(values.max()):
                return math.nan
            if lo == hi:
                return float(lo)
            values, offset = values[up_to_hi & (values >= lo)], below
    ascending = np.sort(values)
    if math.isnan(ascending[-1]):  # sorting puts NaN last
        return math.nan
    half = n // 2 - offset
    if n % 2:
        return float(ascending[half])
    return float((ascending[half - 1] + ascending[half]) / 2)  # in float32, as np.median's mean


def _frame_width(shape: tuple[int, int]) -> int:
    return max(1, min(shape) // 32)  # about 3% of the short side, at least 1 px


def _frame(arr: np.ndarray) -> np.ndarray:
    """The pixels of the outer frame."""
    k = _frame_width(arr.shape)
    return np.concatenate([arr[:k].ravel(), arr[-k:].ravel(), arr[k:-k, :k].ravel(), arr[k:-k, -k:].ravel()])


def _noise(arr: np.ndarray) -> float:
    """Standard deviation of pixel noise from neighbour differences (median |dx|, |dy| / (0.6745 sqrt 2)):
    strokes and light gradients change slowly, so their edges are a minority of the differences."""
    h, w = arr.shape
    if min(h, w) < 2:
        return 0.0
    step = max(1, math.ceil(min(h, w) / NOISE_SAMPLE_SIDE))  # every step-th row and column: plenty of pairs
    rows, cols = arr[::step], arr[:, ::step]
    down = (h - 1) * cols.shape[1]
    diffs = np.empty(down + rows.shape[0] * (w - 1), arr.dtype)
    np.subtract(cols[1:], cols[:-1], out=diffs[:down].reshape(h - 1, -1))
    np.subtract(rows[:, 1:], rows[:, :-1], out=diffs[down:].reshape(-1, w - 1))
    return _median(np.abs(diffs, out=diffs)) / (0.6745 * math.sqrt(2.0))


def _ink_is_light(lum: np.ndarray, noise: float) -> bool:
    """Polarity: which side of the frame's median level carries more contrast mass beyond the noise."""
    threshold = max(INK_NOISE_SIGMAS * noise, INK_MIN_CONTRAST)
    beyond = np.empty((2,) + lum.shape, lum.dtype)  # light ink: signed - threshold; dark: -signed - threshold
    signed = np.subtract(lum, _median(_frame(lum)), out=beyond[0])
    np.subtract(-threshold, signed, out=beyond[1])
    signed -= threshold
    # clip, not np.maximum: numpy has no fast loop for np.maximum against a scalar (4x slower on a photo)
    light, dark = beyond.clip(0.0, np.inf, out=beyond).reshape(2, -1).sum(axis=1)
    return bool(light > dark)


def _background(bright_ink: np.ndarray, noise: float | None = None) -> np.ndarray:
    """A smooth surface (constant, plane or quadratic) fitted to the background pixels of a reduced copy.
    A grey opening (min, then max, over a window wider than a stroke) gives the first guess of which pixels are
    paper wherever the ink lies; each refit then drops the pixels that stand out from the last surface (a blob of
    ink wider than the window). The surface has no border artefacts and no holes behind strokes.
    noise: bright_ink's, when already measured."""
    h, w = bright_ink.shape
    factor = max(1, math.ceil(max(h, w) / BACKGROUND_GRID))
    small = _mean_pool(bright_ink, factor)
    if factor > 1 or noise is None:
        noise = _noise(small)
    threshold = max(INK_NOISE_SIGMAS * noise, INK_MIN_CONTRAST)
    k = max(3, int(BACKGROUND_WINDOW * max(small.shape)) | 1)
    surface = _rank_filter(_rank_filter(small, k, np.minimum), k, np.maximum)
    last_paper = None
    for _ in range(BACKGROUND_REFITS):
        paper = small - surface <= threshold
        count = np.count_nonzero(paper)
        if count == 0:
            break
        if last_paper is not None and np.array_equal(paper, last_paper):
            break  # the same pixels give the same fit: the remaining refits would change nothing
        share = count / paper.size  # fewer paper pixels, a simpler surface: a quadratic needs them spread out
        order = 2 if share >= 0.5 else 1 if share >= 0.15 else 0
        terms, terms64 = _surface_terms(small.shape, factor, h, w, order)
        coef = _least_squares(terms64.compress(paper.ravel(), axis=0), small[paper])
        surface = terms @ coef
        last_paper = paper
    return _full_surface(coef, h, w)


def _full_surface(coef: np.ndarray, h: int, w: int) -> np.ndarray:
    """The fitted terms at full size, by broadcasting a column of y against a row of x (no (h, w, terms) array),
    summed in the order 1, x, y, x^2, xy, y^2."""
    if len(coef) == 1:
        return np.full((h, w), coef[0] + np.float32(0.0), np.float32)
    x, y, xx, yy = _unit_grid(h, w)
    out = np.add(coef[0] + coef[1] * x, coef[2] * y)
    if len(coef) == 6:
        out += coef[3] * xx
        cross = np.multiply(x, y)
        out += np.multiply(cross, coef[4], out=cross)
        out += coef[5] * yy
    return out


@lru_cache(maxsize=64)
def _unit_grid(h: int, w: int) -> tuple[np.ndarray, ...]:
    """x as a row and y as a column, both in [-1, 1], and their squares."""
    y = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None] if h > 1 else np.full((1, 1), -1.0, np.float32)
    x = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :] if w > 1 else np.full((1, 1), -1.0, np.float32)
    return _read_only(x, y, x * x, y * y)


_RIDGE = {n: 1e-9 * np.eye(n) for n in (1, 3, 6)}


def _least_squares(terms: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Normal equations for at most six terms (far cheaper than an SVD here; the terms are well scaled in [-1, 1])."""
    gram = terms.T @ terms + _RIDGE[terms.shape[1]]
    return np.linalg.solve(gram, terms.T @ values.astype(np.float64)).astype(np.float32)


@lru_cache(maxsize=32)
def _surface_terms(shape: tuple[int, int], factor: int, h: int, w: int, order: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols, terms) float32 and (cells, terms) float64 surface terms at the reduced copy's cell centres,
    x and y in [-1, 1] of the full-size image; the same for every image of one size, so cached (read-only)."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    ys, xs = (ys + 0.5) * factor - 0.5, (xs + 0.5) * factor - 0.5  # cell centres in full-size pixels
    y, x = 2 * ys / max(h - 1, 1) - 1, 2 * xs / max(w - 1, 1) - 1
    terms = [np.ones_like(x)]
    if order >= 1:
        terms += [x, y]
    if order >= 2:
        terms += [x * x, x * y, y * y]
    terms32 = np.stack(terms, axis=-1)
    return _read_only(terms32, terms32.reshape(-1, len(terms)).astype(np.float64))


def _mean_pool(arr: np.ndarray, factor: int) -> np.ndarray:
    if factor < 2:
        return arr
    h, w = arr.shape
    if h % factor or w % factor:  # replicate the last row and column out to whole cells
        arr = arr.take(_edge_rows(h, 0, -h % factor), axis=0).take(_edge_rows(w, 0, -w % factor), axis=1)
    ph, pw = arr.shape
    return arr.reshape(ph // factor, factor, pw // factor, factor).mean(axis=(1, 3))


@lru_cache(maxsize=128)
def _edge_rows(n: int, before: int, after: int) -> np.ndarray:
    """Row indices that pad n rows by repeating the first `before` and the last `after` times."""
    return _read_only(np.clip(np.arange(-before, n + after), 0, n - 1))


def _read_only(*arrays: np.ndarray):
    """Cached arrays are shared by every request: make them read-only (one array, or a tuple)."""
    for a in arrays:
        a.flags.writeable = False
    return arrays[0] if len(arrays) == 1 else arrays


def _rank_filter(arr: np.ndarray, k: int, ufunc) -> np.ndarray:
    """Centred k x k np.minimum or np.maximum filter, edges replicated (columns, then columns of the transpose)."""
    r = k // 2
    down = _runs(arr.take(_edge_rows(arr.shape[0], r, r), axis=0), k, ufunc)
    return _runs(down.T.take(_edge_rows(arr.shape[1], r, r), axis=0), k, ufunc).T


def _runs(span: np.ndarray, k: int, ufunc) -> np.ndarray:
    """ufunc over every k consecutive rows of `span` (len(span) - k + 1 results). A run of 2w rows is two runs of
    w, so this takes log2(k) passes rather than k; the last pass joins two overlapping runs."""
    width = 1
    while 2 * width <= k:
        span = ufunc(span[:-width], span[width:])
        width *= 2
    return ufunc(span[:len(span) - (k - width)], span[k - width:])


def _zero_padded(arr: np.ndarray, before: int, after: int) -> np.ndarray:
    h, w = arr.shape
    out = np.zeros((h + before + after, w + before + after), arr.dtype)
    out[before:before + h, before:before + w] = arr
    return out


def _clean_ink(ink: np.ndarray, threshold: float) -> np.ndarray:
    """Drop sub-threshold haze and isolated specks, then stretch so the strongest ink is 1 (in place)."""
    mask = ink > threshold
    mask &= _box3_count(mask) >= 3  # a speck of one or two pixels is noise, a stroke is not
    if not np.count_nonzero(mask):
        raise UndecodableInput("no digit found: only a few isolated specks stand out from the background, no strokes; "
                       "send a digit with clear strokes on a plain background")
    peak = float(ink[mask].max())
    ink -= threshold
    ink /= max(peak - threshold, 1e-6)
    return np.multiply(ink.clip(0.0, 1.0, out=ink), mask, out=ink)


def _box3_count(mask: np.ndarray) -> np.ndarray:
    """How many pixels of each 3x3 neighbourhood are set."""
    p = _zero_padded(mask.view(np.uint8), 1, 1)
    rows = p[:-2] + p[1:-1] + p[2:]
    return rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]


# --------------------------------------------------------------------------------------------- framing

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
    crop = _max_pool(crop, max(crop.shape) // (4 * DIGIT_BOX))  # a thin stroke keeps >= 1 px at 4x the box
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
    return _max_filter(crop, k) if width < MIN_STROKE else _crop_to_ink(_min_filter(crop, k))


def _stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width in pixels: twice the area over the length of the outline (0 when there is no stroke)."""
    area = np.count_nonzero(mask)
    if area == 0:
        return 0.0
    m = _zero_padded(mask, 1, 1)
    outline = np.count_nonzero(m[:, 1:] != m[:, :-1]) + np.count_nonzero(m[1:] != m[:-1])
    return 2.0 * area / outline


def _max_filter(arr: np.ndarray, k: int) -> np.ndarray:
    """Grey dilation with a k x k square; the result grows by k - 1 pixels in each dimension."""
    padded = _zero_padded(arr, k - 1, k - 1)
    return np.ascontiguousarray(_runs(_runs(padded, k, np.maximum).T, k, np.maximum).T)


def _min_filter(arr: np.ndarray, k: int) -> np.ndarray:
    """Grey erosion with a k x k square, same size out (outside counts as no ink)."""
    padded = _zero_padded(arr, (k - 1) // 2, k // 2)
    return np.ascontiguousarray(_runs(_runs(padded, k, np.minimum).T, k, np.minimum).T)


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


def _max_pool(arr: np.ndarray, factor: int) -> np.ndarray:
    if factor < 2:
        return arr
    h, w = arr.shape
    padded = np.zeros((h + -h % factor, w + -w % factor), arr.dtype)
    padded[:h, :w] = arr
    ph, pw = padded.shape
    rows = padded.reshape(ph // factor, factor, pw).max(axis=1)  # whole rows at a time: far faster than axis=(1, 3)
    return np.maximum.reduce([rows[:, i::factor] for i in range(factor)])


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
