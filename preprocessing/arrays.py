"""Small numpy kernels for the digit pipeline's tiny arrays.

A 28x28 digit is a few hundred numpy calls on tiny arrays on the event loop, so these avoid numpy's slow paths
(np.pad, np.median, sliding windows, np.maximum with a scalar) and cache per-size index grids; each gives the same
values, bit for bit, as the plain numpy form it replaces.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


_SAMPLE = np.sort(np.random.default_rng(0).random(2048))  # where to sample: random, as images have rows


def median_of(values: np.ndarray) -> float:
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


def mean_pool(arr: np.ndarray, factor: int) -> np.ndarray:
    if factor < 2:
        return arr
    h, w = arr.shape
    if h % factor or w % factor:  # replicate the last row and column out to whole cells
        arr = arr.take(edge_rows(h, 0, -h % factor), axis=0).take(edge_rows(w, 0, -w % factor), axis=1)
    ph, pw = arr.shape
    return arr.reshape(ph // factor, factor, pw // factor, factor).mean(axis=(1, 3))


@lru_cache(maxsize=128)
def edge_rows(n: int, before: int, after: int) -> np.ndarray:
    """Row indices that pad n rows by repeating the first `before` and the last `after` times."""
    return read_only(np.clip(np.arange(-before, n + after), 0, n - 1))


def read_only(*arrays: np.ndarray):
    """Cached arrays are shared by every request: make them read-only (one array, or a tuple)."""
    for a in arrays:
        a.flags.writeable = False
    return arrays[0] if len(arrays) == 1 else arrays


def rank_filter(arr: np.ndarray, k: int, ufunc) -> np.ndarray:
    """Centred k x k np.minimum or np.maximum filter, edges replicated (columns, then columns of the transpose)."""
    r = k // 2
    down = sliding_reduce(arr.take(edge_rows(arr.shape[0], r, r), axis=0), k, ufunc)
    return sliding_reduce(down.T.take(edge_rows(arr.shape[1], r, r), axis=0), k, ufunc).T


def sliding_reduce(span: np.ndarray, k: int, ufunc) -> np.ndarray:
    """ufunc over every k consecutive rows of `span` (len(span) - k + 1 results). A run of 2w rows is two runs of
    w, so this takes log2(k) passes rather than k; the last pass joins two overlapping runs."""
    width = 1
    while 2 * width <= k:
        span = ufunc(span[:-width], span[width:])
        width *= 2
    return ufunc(span[:len(span) - (k - width)], span[k - width:])


def zero_padded(arr: np.ndarray, before: int, after: int) -> np.ndarray:
    h, w = arr.shape
    out = np.zeros((h + before + after, w + before + after), arr.dtype)
    out[before:before + h, before:before + w] = arr
    return out


def box3_count(mask: np.ndarray) -> np.ndarray:
    """How many pixels of each 3x3 neighbourhood are set."""
    p = zero_padded(mask.view(np.uint8), 1, 1)
    rows = p[:-2] + p[1:-1] + p[2:]
    return rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]


def max_filter(arr: np.ndarray, k: int) -> np.ndarray:
    """Grey dilation with a k x k square; the result grows by k - 1 pixels in each dimension."""
    padded = zero_padded(arr, k - 1, k - 1)
    return np.ascontiguousarray(sliding_reduce(sliding_reduce(padded, k, np.maximum).T, k, np.maximum).T)


def min_filter(arr: np.ndarray, k: int) -> np.ndarray:
    """Grey erosion with a k x k square, same size out (outside counts as no ink)."""
    padded = zero_padded(arr, (k - 1) // 2, k // 2)
    return np.ascontiguousarray(sliding_reduce(sliding_reduce(padded, k, np.minimum).T, k, np.minimum).T)


def max_pool(arr: np.ndarray, factor: int) -> np.ndarray:
    if factor < 2:
        return arr
    h, w = arr.shape
    padded = np.zeros((h + -h % factor, w + -w % factor), arr.dtype)
    padded[:h, :w] = arr
    ph, pw = padded.shape
    rows = padded.reshape(ph // factor, factor, pw).max(axis=1)  # whole rows at a time: far faster than axis=(1, 3)
    return np.maximum.reduce([rows[:, i::factor] for i in range(factor)])
