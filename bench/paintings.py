"""High-contrast "paintings" made in code, for testing the style balance on paintings nobody tuned for.

    from bench.paintings import PAINTINGS, make_painting
    img = make_painting("strokes")          # PIL RGB, deterministic (fixed seeds)

- strokes: random bright, saturated brush strokes (thick lines with round caps) on a black ground
- poster:  a hard-edged poster: flat Voronoi cells in five saturated colours and white, black outlines
- noise:   a noise texture: blocky random colour noise (4 px blocks), every block black, white or saturated
- probes (not in the grid): stripes (12 px diagonal bands), checker (8 px black and white squares)

Each is built from numpy and PIL only, with its own numpy seed, so tests and bench see the same pixels.
"""
from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw

DEFAULT_SIZE = (512, 512)


def _bright(rng: np.random.Generator) -> tuple[int, int, int]:
    h = rng.uniform(0, 1)
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(0.85, 1.0), 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def strokes(size: tuple[int, int] = DEFAULT_SIZE, seed: int = 11) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.new("RGB", size, (0, 0, 0))
    draw = ImageDraw.Draw(img)
    for _ in range(90):
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(0.1, 0.4) * max(w, h)
        x1, y1 = x0 + np.cos(angle) * length, y0 + np.sin(angle) * length
        width = int(rng.uniform(0.01, 0.04) * max(w, h))
        colour = _bright(rng)
        draw.line([(x0, y0), (x1, y1)], fill=colour, width=width)
        r = width // 2
        for x, y in ((x0, y0), (x1, y1)):
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    return img


def poster(size: tuple[int, int] = DEFAULT_SIZE, seed: int = 12) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    palette = np.array([(255, 32, 32), (255, 220, 0), (0, 90, 255), (0, 200, 80), (255, 0, 200), (255, 255, 255)],
                       dtype=np.uint8)
    n = 24
    centres = rng.uniform(0, 1, (n, 2)) * (w, h)
    colours = palette[rng.integers(0, len(palette), n)]
    yy, xx = np.mgrid[0:h, 0:w]
    d = (xx[..., None] - centres[:, 0]) ** 2 + (yy[..., None] - centres[:, 1]) ** 2
    order = np.sort(d, axis=-1)
    nearest = np.argmin(d, axis=-1)
    arr = colours[nearest]
    edge = np.sqrt(order[..., 1]) - np.sqrt(order[..., 0]) < 0.012 * max(w, h)  # black outlines between cells
    arr[edge] = 0
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def noise(size: tuple[int, int] = DEFAULT_SIZE, seed: int = 13, block: int = 4) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    bw, bh = -(-w // block), -(-h // block)
    palette = np.array([(0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 64, 255), (255, 255, 0),
                        (255, 0, 255), (0, 255, 255)], dtype=np.uint8)
    small = palette[rng.integers(0, len(palette), (bh, bw))]
    return Image.fromarray(small, "RGB").resize((bw * block, bh * block), Image.Resampling.NEAREST).crop((0, 0, w, h))


def stripes(size: tuple[int, int] = DEFAULT_SIZE, band: int = 12) -> Image.Image:
    """Diagonal hard-edged bands, orange and navy, `band` px wide (a probe: not in the grid)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    palette = np.array([(255, 60, 0), (0, 30, 90)], dtype=np.uint8)
    return Image.fromarray(palette[((xx + yy) // band) % 2], "RGB")


def checker(size: tuple[int, int] = DEFAULT_SIZE, square: int = 8) -> Image.Image:
    """A black and white checkerboard of `square` px squares (a probe: not in the grid)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    grey = (((xx // square + yy // square) % 2) * 255).astype(np.uint8)
    return Image.fromarray(np.stack([grey] * 3, axis=-1), "RGB")


PAINTINGS = {"strokes": strokes, "poster": poster, "noise": noise}
# Periodic patterns the balance is known to handle badly (docs/style.md, "Beyond the grid"): not grid columns, but
# `python -m bench.style_grid --paintings stripes checker` runs them.
PROBES = {"stripes": stripes, "checker": checker}


def make_painting(name: str, size: tuple[int, int] = DEFAULT_SIZE) -> Image.Image:
    """One generated painting by name (PAINTINGS, then PROBES); KeyError for another name."""
    return {**PAINTINGS, **PROBES}[name](size)
