"""MNIST test digits rendered the way people send them: image files a user would upload or a page would post.

Each rendering takes one MNIST digit (uint8 28x28, white ink on black) and a seeded numpy Generator and returns
encoded image bytes. The ink shape always comes from the MNIST digit itself (smoothly enlarged), so the label is
the MNIST label; only the framing, the stroke weight, the medium and the file change.

    native       the MNIST digit as a 28x28 PNG (white on black)
    tight_crop   dark on white, cropped to the ink box with a 0-2 px margin, longer side 20-400 px (a form cell)
    edge_cut     dark on white, scaled to fill a square canvas so strokes run off 1-4 edges (<= 10 % cut off)
    thick        dark on white, a marker: strokes 3-4 px wide in MNIST's 20 px box (MNIST's median is 1.8 px)
    thin         dark on white, a fine pen: strokes 0.7-1.1 px wide in that box
    pencil       grey graphite on off-white grainy paper, a photo saved as JPEG
    gradient     dark ink on paper under uneven light (one side up to 55 % darker)
    chalk        light, grainy chalk on a dark green board
    alpha        a transparent canvas export: black strokes carried by the alpha channel only

`python -m bench.digit_renderings --out DIR` writes a contact sheet of every rendering for a few digits.
"""
from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

Rendering = Callable[[np.ndarray, np.random.Generator], bytes]


# ------------------------------------------------------------------------------------------------ ink shapes

def ink_box(digit: np.ndarray, level: int = 0) -> tuple[slice, slice]:
    rows = np.flatnonzero((digit > level).any(axis=1))
    cols = np.flatnonzero((digit > level).any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def enlarged(digit: np.ndarray, height: int, width: int) -> np.ndarray:
    """The digit's ink box as an ink map in [0, 1] of (height, width), smoothly interpolated."""
    rows, cols = ink_box(digit)
    crop = Image.fromarray(digit[rows, cols].astype(np.float32) / 255.0, mode="F")
    big = np.asarray(crop.resize((max(1, width), max(1, height)), Image.Resampling.BICUBIC), dtype=np.float32)
    return np.clip(big, 0.0, 1.0)


def fitted(digit: np.ndarray, longer: int) -> np.ndarray:
    """The ink box scaled so its longer side is `longer` pixels, keeping the aspect ratio."""
    rows, cols = ink_box(digit)
    h, w = rows.stop - rows.start, cols.stop - cols.start
    scale = longer / max(h, w)
    return enlarged(digit, max(1, round(h * scale)), max(1, round(w * scale)))


def reweighted(ink: np.ndarray, box_width: float) -> np.ndarray:
    """Strokes dilated or eroded to a mean width of `box_width` pixels when the digit is framed in MNIST's 20 px
    box (MNIST's own median is about 1.8 px): a marker or a fine pen, whatever the digit's own width was."""
    px_per_box_px = max(ink.shape) / 20
    change = (box_width - _stroke_width(ink > 0.5) / px_per_box_px) * px_per_box_px
    size = int(round(abs(change))) + 1
    if size < 2:
        return ink
    img = Image.fromarray(grey8(ink))
    out = img.filter(ImageFilter.MaxFilter(size | 1) if change > 0 else ImageFilter.MinFilter(size | 1))
    out = np.asarray(out.filter(ImageFilter.GaussianBlur(size / 6)), dtype=np.float32) / 255.0
    return np.clip(out / max(float(out.max()), 1e-6), 0.0, 1.0)


def _stroke_width(mask: np.ndarray) -> float:
    m = np.pad(mask, 1)
    outline = np.count_nonzero(m[:, 1:] != m[:, :-1]) + np.count_nonzero(m[1:] != m[:-1])
    return 2.0 * mask.sum() / max(outline, 1)


def on_canvas(ink: np.ndarray, canvas: tuple[int, int], top: int, left: int) -> np.ndarray:
    """Paste an ink map onto an empty canvas at (top, left); parts outside the canvas are cut off."""
    out = np.zeros(canvas, dtype=np.float32)
    h, w = ink.shape
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + h, canvas[0]), min(left + w, canvas[1])
    if t1 > t0 and l1 > l0:
        out[t0:t1, l0:l1] = ink[t0 - top:t1 - top, l0 - left:l1 - left]
    return out


def with_margin(ink: np.ndarray, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """The ink map centred with a random margin of low..high times its longer side."""
    h, w = ink.shape
    side = int(max(h, w) * (1 + 2 * rng.uniform(low, high)))
    top = (side - h) // 2 + int(rng.integers(-(side - h) // 4, (side - h) // 4 + 1))
    left = (side - w) // 2 + int(rng.integers(-(side - w) // 4, (side - w) // 4 + 1))
    return on_canvas(ink, (side, side), top, left)


# ------------------------------------------------------------------------------------------------ files

def png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(arr: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def grey8(lum: np.ndarray) -> np.ndarray:
    return np.round(np.clip(lum, 0.0, 1.0) * 255).astype(np.uint8)


def dark_on_white(ink: np.ndarray) -> bytes:
    return png(grey8(1.0 - ink))


# ------------------------------------------------------------------------------------------------ renderings

def native(digit, rng):
    return png(digit)


def tight_crop(digit, rng):
    longer = int(rng.integers(20, 401))
    ink = fitted(digit, longer)
    margin = int(rng.integers(0, 3))
    return dark_on_white(np.pad(ink, margin))


def edge_cut(digit, rng):
    """The digit fills a square canvas and overflows 1-4 of its edges by up to a tenth of its extent in all."""
    side = int(rng.choice([140, 200, 280, 400]))
    edges = rng.permutation(4)[: int(rng.integers(1, 5))]  # 0 top, 1 bottom, 2 left, 3 right
    cut = {e: rng.uniform(0.02, 0.1) / (1 if len({e, e ^ 1} & set(edges)) == 1 else 2) for e in edges}
    rows, cols = ink_box(digit)
    aspect = (cols.stop - cols.start) / (rows.stop - rows.start)
    # the longer side spans the canvas plus what is cut from its two ends; the other side keeps the aspect
    span_v = 1 + cut.get(0, 0) + cut.get(1, 0)
    span_h = 1 + cut.get(2, 0) + cut.get(3, 0)
    height = side * span_v if aspect <= 1 else side * span_h / aspect
    width = height * aspect
    ink = enlarged(digit, round(height), round(width))
    h, w = ink.shape
    top = -round(cut[0] * h) if 0 in cut else (side - round(cut.get(1, 0) * h) - h if 1 in cut else (side - h) // 2)
    left = -round(cut[2] * w) if 2 in cut else (side - round(cut.get(3, 0) * w) - w if 3 in cut else (side - w) // 2)
    return dark_on_white(on_canvas(ink, (side, side), top, left))


def thick(digit, rng):
    ink = reweighted(fitted(digit, int(rng.integers(80, 201))), rng.uniform(3.0, 4.0))
    return dark_on_white(with_margin(ink, rng, 0.1, 0.3))


def thin(digit, rng):
    ink = reweighted(fitted(digit, int(rng.integers(120, 241))), rng.uniform(0.7, 1.1))
    return dark_on_white(with_margin(ink, rng, 0.1, 0.3))


def pencil(digit, rng):
    ink = with_margin(fitted(digit, int(rng.integers(100, 241))), rng, 0.15, 0.4)
    paper = np.array([rng.uniform(0.86, 0.96), rng.uniform(0.84, 0.94), rng.uniform(0.76, 0.88)], np.float32)
    graphite = rng.uniform(0.25, 0.5)
    grain = 1.0 - rng.uniform(0.0, 0.45, ink.shape).astype(np.float32)  # graphite skips the paper's tooth
    darkening = (paper.mean() - graphite) * ink * grain
    noise = rng.normal(0, 0.015, ink.shape + (3,)).astype(np.float32)
    rgb = paper[None, None, :] - darkening[..., None] + noise
    return jpeg(grey8(rgb), quality=int(rng.integers(60, 90)))


def gradient(digit, rng):
    ink = with_margin(fitted(digit, int(rng.integers(100, 241))), rng, 0.15, 0.4)
    h, w = ink.shape
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (np.cos(angle) * (xs / w - 0.5) + np.sin(angle) * (ys / h - 0.5)) + 0.5  # about 0..1 across
    light = 1.0 - rng.uniform(0.35, 0.55) * np.clip(ramp, 0, 1)
    lum = light * (0.95 - 0.85 * ink) + rng.normal(0, 0.01, ink.shape)
    return jpeg(grey8(lum), quality=90)


def chalk(digit, rng):
    ink = with_margin(fitted(digit, int(rng.integers(100, 241))), rng, 0.15, 0.4)
    board = np.array([rng.uniform(0.12, 0.2), rng.uniform(0.22, 0.32), rng.uniform(0.16, 0.24)], np.float32)
    dust = rng.uniform(0.0, 0.06, ink.shape).astype(np.float32)  # old chalk wiped across the board
    grain = 1.0 - rng.uniform(0.0, 0.5, ink.shape).astype(np.float32)
    lift = rng.uniform(0.55, 0.75) * ink * grain
    rgb = board[None, None, :] + (dust + lift)[..., None] + rng.normal(0, 0.02, ink.shape + (3,))
    return jpeg(grey8(rgb), quality=int(rng.integers(70, 92)))


def alpha(digit, rng):
    ink = with_margin(fitted(digit, int(rng.integers(60, 241))), rng, 0.05, 0.4)
    rgba = np.zeros(ink.shape + (4,), dtype=np.uint8)
    rgba[..., 3] = grey8(ink)
    return png(rgba, mode="RGBA")


RENDERINGS: dict[str, Rendering] = {
    "native": native, "tight_crop": tight_crop, "edge_cut": edge_cut, "thick": thick, "thin": thin,
    "pencil": pencil, "gradient": gradient, "chalk": chalk, "alpha": alpha,
}
EDGE_RENDERINGS = ("edge_cut",)  # strokes cut off at the edges: a lower target


def render(name: str, digit: np.ndarray, index: int, seed: int = 0) -> bytes:
    """Rendering `name` of one digit, reproducible from (seed, index)."""
    rng = np.random.default_rng([seed, index, list(RENDERINGS).index(name)])
    return RENDERINGS[name](digit, rng)


def contact_sheet(digits: np.ndarray, out: Path, seed: int = 0) -> Path:
    cell = 96
    sheet = Image.new("RGB", (cell * len(RENDERINGS), cell * len(digits)), "white")
    for r, digit in enumerate(digits):
        for c, name in enumerate(RENDERINGS):
            img = Image.open(io.BytesIO(render(name, digit, r, seed)))
            if img.mode == "RGBA":  # show the transparent canvas on a checkerboard, as an image viewer would
                board = Image.new("RGBA", img.size, (200, 200, 200, 255))
                img = Image.alpha_composite(board, img)
            img = img.convert("RGB")
            img.thumbnail((cell - 4, cell - 4))
            sheet.paste(img, (c * cell + 2, r * cell + 2))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("test-artifacts"))
    parser.add_argument("--count", type=int, default=10)
    args = parser.parse_args()
    with np.load(Path(__file__).resolve().parents[1] / "data" / "heldout" / "mnist-test.npz") as npz:
        digits = npz["x"]
    print(contact_sheet(digits[: args.count], args.out / "digit-renderings.png"))


if __name__ == "__main__":
    main()
