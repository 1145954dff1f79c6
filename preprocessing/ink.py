"""Ink from any picture of a digit: `to_ink(img)`, PIL image -> (H, W) float32 ink map in [0, 1], 1 = ink.

How the ink is found (docs/digits.md gives the measurements behind each choice):
1. Polarity and paper level from the outer frame's median: a digit that touches or crosses the edges still
   leaves most of the frame to the paper.
2. The background (paper or board, uneven light included) is a grey opening of the image with the ink made
   bright: a minimum then a maximum over a window half the image's longer side, wider than any stroke. It needs
   no clean frame, so ink on one to four edges does not move it.
3. The noise level comes from neighbour differences, which ink on the frame does not inflate.

An image with no strokes raises UndecodableInput with what was seen.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image

from preprocessing.arrays import box3_count, mean_pool, median_of, rank_filter, read_only
from preprocessing.decoding import luminance
from preprocessing.errors import UndecodableInput

INK_MIN_CONTRAST = 0.05  # ink must differ from the background by at least this much (of full scale)
INK_NOISE_SIGMAS = 4.0  # ... and by this many standard deviations of the background's noise
BACKGROUND_GRID = 64  # the background is estimated on a copy at most this many pixels on its longer side
BACKGROUND_WINDOW = 0.5  # opening window, as a share of the longer side: wider than a stroke
BACKGROUND_REFITS = 3
NOISE_SAMPLE_SIDE = 96  # the noise is measured on about this many rows and columns
MIN_BACKGROUND_LUMINANCE = 0.1  # contrast is relative to the background, which on a black screen is ~0
EVEN_LIGHT_SPREAD = 0.1  # a background whose light varies less than this is taken as evenly lit


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
    median = np.float32(median_of(light.ravel()))
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
    return median_of(np.abs(diffs, out=diffs)) / (0.6745 * math.sqrt(2.0))


def _ink_is_light(lum: np.ndarray, noise: float) -> bool:
    """Polarity: which side of the frame's median level carries more contrast mass beyond the noise."""
    threshold = max(INK_NOISE_SIGMAS * noise, INK_MIN_CONTRAST)
    beyond = np.empty((2,) + lum.shape, lum.dtype)  # light ink: signed - threshold; dark: -signed - threshold
    signed = np.subtract(lum, median_of(_frame(lum)), out=beyond[0])
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
    small = mean_pool(bright_ink, factor)
    if factor > 1 or noise is None:
        noise = _noise(small)
    threshold = max(INK_NOISE_SIGMAS * noise, INK_MIN_CONTRAST)
    k = max(3, int(BACKGROUND_WINDOW * max(small.shape)) | 1)
    surface = rank_filter(rank_filter(small, k, np.minimum), k, np.maximum)
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
    return read_only(x, y, x * x, y * y)


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
    return read_only(terms32, terms32.reshape(-1, len(terms)).astype(np.float64))


def _clean_ink(ink: np.ndarray, threshold: float) -> np.ndarray:
    """Drop sub-threshold haze and isolated specks, then stretch so the strongest ink is 1 (in place)."""
    mask = ink > threshold
    mask &= box3_count(mask) >= 3  # a speck of one or two pixels is noise, a stroke is not
    if not np.count_nonzero(mask):
        raise UndecodableInput("no digit found: only a few isolated specks stand out from the background, no strokes; "
                       "send a digit with clear strokes on a plain background")
    peak = float(ink[mask].max())
    ink -= threshold
    ink /= max(peak - threshold, 1e-6)
    return np.multiply(ink.clip(0.0, 1.0, out=ink), mask, out=ink)
