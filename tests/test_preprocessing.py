"""preprocessing (decoding, digits, objects): decoding limits, MNIST-style digit framing, CIFAR-style object input.

Ground truth for the digit pipeline is the official MNIST test set shipped in data/heldout/mnist-test.npz:
digits re-rendered the way people send them (photo of paper, chalk board, transparent canvas, 16-bit scan,
GIF/BMP/WebP) must come out like the original 28x28 digit does.
"""
import base64
import io
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFile

from preprocessing.errors import OversizedInput, UndecodableInput, UnsupportedInput
from preprocessing.decoding import decode_base64_image, open_image
from preprocessing.digits import digit_tensor, mnist_normalise
from preprocessing.ink import to_ink
from preprocessing.objects import normalise_cifar_uint8, object_tensor
from models.digits import MNIST_MEAN, MNIST_STD
from models.objects import CIFAR_MEAN, CIFAR_STD

REPO_ROOT = Path(__file__).resolve().parents[1]
MNIST_NPZ = REPO_ROOT / "data" / "heldout" / "mnist-test.npz"
LIMIT = 40_000_000


# ------------------------------------------------------------------------------------------------ helpers

@pytest.fixture(scope="module")
def mnist_digits() -> list[np.ndarray]:
    """The first test example of each class, 0..9 (uint8 28x28, white ink on black)."""
    assert MNIST_NPZ.is_file(), f"{MNIST_NPZ} is missing: the held-out MNIST test set must ship with the repo"
    with np.load(MNIST_NPZ) as data:
        x, y = data["x"], data["y"]
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8 and y.shape == (10000,)
    return [x[int(np.flatnonzero(y == c)[0])] for c in range(10)]


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def upscaled(digit: np.ndarray, factor: int) -> np.ndarray:
    """The digit as ink in [0, 1], enlarged smoothly like a bigger drawing of it."""
    big = Image.fromarray(digit).resize((28 * factor, 28 * factor), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(big, dtype=np.float32) / 255.0, 0.0, 1.0)


def paper_jpeg(digit, rng):
    """(a) Dark ink photographed on light-grey paper: 280x200, off-centre, texture, slight light gradient."""
    h, w = 200, 280
    paper = 225 + rng.normal(0, 6, (h, w)) + np.linspace(-8, 8, w)[None, :]
    paper[14:182, 90:258] *= 1 - 0.85 * upscaled(digit, 6)
    rgb = np.stack([paper, paper * 0.98, paper * 0.95], axis=-1)  # warm paper tint
    return encode(Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)), "JPEG", quality=85)


def board_png(digit, rng):
    """(b) Light chalk on a dark board: 400x300 RGB, off-centre."""
    board = 30 + rng.normal(0, 5, (300, 400))
    board[40:264, 150:374] += 200 * upscaled(digit, 8)
    return encode(Image.fromarray(np.clip(board, 0, 255).astype(np.uint8)).convert("RGB"), "PNG")


def alpha_canvas_png(digit, rng):
    """(c) Canvas export: RGB all zeros, only alpha carries the strokes."""
    rgba = np.zeros((200, 300, 4), np.uint8)
    rgba[20:160, 30:170, 3] = np.round(upscaled(digit, 5) * 255).astype(np.uint8)
    return encode(Image.fromarray(rgba, "RGBA"), "PNG")


def white_strokes_png(digit, rng):
    """(c') White strokes on a transparent canvas (light strokes: must not vanish on a white backdrop)."""
    rgba = np.zeros((160, 180, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[10:122, 60:172, 3] = np.round(upscaled(digit, 4) * 255).astype(np.uint8)
    return encode(Image.fromarray(rgba, "RGBA"), "PNG")


def gray16_png(digit, rng):
    """(d) 16-bit greyscale scan (mode I;16): paper near 60000, ink far above 255."""
    paper = 60000 + rng.normal(0, 300, (100, 120))
    paper[5:89, 30:114] -= 52000 * upscaled(digit, 3)
    return encode(Image.fromarray(np.clip(paper, 0, 65535).astype(np.uint16)), "PNG")


def palette_gif(digit, rng):
    """(e) Palette GIF, dark ink on light background."""
    grey = np.full((140, 160), 240.0)
    grey[10:122, 40:152] -= 220 * upscaled(digit, 4)
    img = Image.fromarray(grey.astype(np.uint8)).convert("RGB")
    return encode(img.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "GIF")


def light_bmp(digit, rng):
    """(f) BMP, light ink on dark."""
    grey = np.full((70, 90), 20.0)
    grey[5:61, 25:81] += 230 * upscaled(digit, 2)
    return encode(Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).convert("RGB"), "BMP")


def lossy_webp(digit, rng):
    """(f) Lossy WebP, dark ink on white with a little noise."""
    grey = 250.0 + rng.normal(0, 3, (130, 150))
    grey[8:120, 5:117] -= 230 * upscaled(digit, 4)
    return encode(Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).convert("RGB"), "WEBP", quality=80)


STYLES = {
    "paper-jpeg": (paper_jpeg, "RGB"),
    "board-png": (board_png, "RGB"),
    "alpha-canvas-png": (alpha_canvas_png, "RGBA"),
    "white-strokes-png": (white_strokes_png, "RGBA"),
    "gray16-png": (gray16_png, "I;16"),
    "palette-gif": (palette_gif, "P"),
    "bmp": (light_bmp, "RGB"),
    "webp": (lossy_webp, "RGB"),
}


def reference(digit: np.ndarray) -> np.ndarray:
    return mnist_normalise(to_ink(Image.fromarray(digit)))


def aligned_r(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r, best over +-1 px shifts: the centring shift is rounded to whole pixels, as in MNIST itself."""
    return max(float(np.corrcoef(a.ravel(), np.roll(b, (dy, dx), axis=(0, 1)).ravel())[0, 1])
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def centre_of_mass(a: np.ndarray) -> tuple[float, float]:
    ys, xs = np.mgrid[0:a.shape[0], 0:a.shape[1]]
    return float((a * ys).sum() / a.sum()), float((a * xs).sum() / a.sum())


def ink_box(a: np.ndarray, level: float = 0.1) -> tuple[int, int]:
    rows = np.flatnonzero((a > level).any(axis=1))
    cols = np.flatnonzero((a > level).any(axis=0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def assert_mnist_framed(out: np.ndarray) -> None:
    assert out.shape == (28, 28) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0 and out.max() > 0.99
    cy, cx = centre_of_mass(out)
    assert abs(cy - 14) <= 1.0 and abs(cx - 14) <= 1.0, (cy, cx)
    h, w = ink_box(out)
    assert max(h, w) in (19, 20, 21) and min(h, w) <= 21, (h, w)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")


def bilevel_png(width: int, height: int) -> bytes:
    """A real, valid 1-bit greyscale PNG of any size, built row by row without allocating the image."""
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed zero bits
    packer, parts = zlib.compressobj(9), []
    block = row * 256
    for _ in range(height // 256):
        parts.append(packer.compress(block))
    parts.append(packer.compress(row * (height % 256)))
    parts.append(packer.flush())
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"".join(parts)) + png_chunk(b"IEND", b"")


# ------------------------------------------------------------------------------------------------ digits

@pytest.mark.parametrize("style", list(STYLES))
def test_rendered_digits_match_the_original_mnist_digit(style, mnist_digits):
    render, mode = STYLES[style]
    rng = np.random.default_rng(7)
    scores = []
    for digit in mnist_digits:
        img = open_image(render(digit, rng), LIMIT)
        assert img.mode == mode
        out = mnist_normalise(to_ink(img))
        assert_mnist_framed(out)
        scores.append(aligned_r(reference(digit), out))
        expected = (torch.from_numpy(out) - MNIST_MEAN) / MNIST_STD
        torch.testing.assert_close(digit_tensor(img), expected.unsqueeze(0))
    assert min(scores) > 0.85 and float(np.mean(scores)) > 0.93, [round(s, 3) for s in scores]


def test_original_mnist_digits_keep_their_mnist_framing(mnist_digits):
    for digit in mnist_digits:
        out = reference(digit)
        assert_mnist_framed(out)
        original = digit.astype(np.float32) / 255
        assert aligned_r(original, out) > 0.97  # MNIST is already framed: almost nothing changes


def test_digit_tensor_shape_dtype_and_normalisation(mnist_digits):
    t = digit_tensor(Image.fromarray(mnist_digits[3]))
    assert t.shape == (1, 28, 28) and t.dtype == torch.float32
    assert t.min().item() == pytest.approx(-MNIST_MEAN / MNIST_STD)  # background
    assert t.max().item() == pytest.approx((1 - MNIST_MEAN) / MNIST_STD)  # strongest ink


def test_polarity_dark_on_light_equals_light_on_dark(mnist_digits):
    for digit in mnist_digits[:5]:
        light_on_dark = Image.fromarray(np.round(upscaled(digit, 5) * 255).astype(np.uint8))
        dark_on_light = Image.fromarray(255 - np.asarray(light_on_dark))
        a, b = digit_tensor(light_on_dark), digit_tensor(dark_on_light)
        assert torch.allclose(a, b, atol=1e-4)


def test_off_centre_small_digit_in_a_corner_is_recentred(mnist_digits):
    canvas = np.full((300, 300), 255, np.uint8)
    canvas[240:282, 10:52] = 255 - np.round(upscaled(mnist_digits[2], 3)[::2, ::2] * 255).astype(np.uint8)
    out = mnist_normalise(to_ink(open_image(encode(Image.fromarray(canvas), "PNG"), LIMIT)))
    assert_mnist_framed(out)
    assert aligned_r(reference(mnist_digits[2]), out) > 0.85


def test_thin_pen_on_a_big_photo_stays_visible():
    img = Image.new("L", (3000, 2000), 235)
    ImageDraw.Draw(img).line([(1200, 600), (1700, 600), (1350, 1500)], fill=40, width=6)  # a "7", 6 px pen
    t = digit_tensor(open_image(encode(img.convert("RGB"), "JPEG", quality=90), LIMIT))
    out = (t[0] * MNIST_STD + MNIST_MEAN).numpy()
    assert_mnist_framed(out)
    assert (out > 0.5).sum() >= 30  # strokes about MNIST-thick, not a faint 1 px trace


def test_lighting_gradient_is_not_ink(mnist_digits):
    rng = np.random.default_rng(1)
    paper = np.linspace(100, 240, 640)[None, :] + np.zeros((480, 1)) + rng.normal(0, 3, (480, 640))
    blank = encode(Image.fromarray(paper.astype(np.uint8)), "JPEG")
    with pytest.raises(UndecodableInput, match="no digit found: only a few isolated specks"):
        digit_tensor(open_image(blank, LIMIT))
    paper[100:380, 200:480] *= 1 - 0.6 * upscaled(mnist_digits[7], 10)  # unevenly lit photo of a "7"
    out = mnist_normalise(to_ink(open_image(encode(Image.fromarray(paper.astype(np.uint8)), "JPEG"), LIMIT)))
    assert_mnist_framed(out)
    assert aligned_r(reference(mnist_digits[7]), out) > 0.9


@pytest.mark.parametrize("make", [
    lambda: Image.new("L", (100, 80), 255),
    lambda: Image.new("RGB", (64, 64), (0, 0, 0)),
    lambda: Image.new("RGBA", (64, 64), (0, 0, 0, 0)),
    lambda: Image.new("I;16", (50, 50), 40000),
    lambda: Image.open(io.BytesIO(encode(Image.fromarray(
        np.clip(200 + np.random.default_rng(0).normal(0, 5, (480, 640)), 0, 255).astype(np.uint8)), "JPEG"))),
], ids=["white", "black", "transparent", "grey16", "noisy-blank-photo"])
def test_blank_image_is_bad_input(make):
    """A blank image is refused with a message that says what was seen, not a generic 'blank'."""
    with pytest.raises(UndecodableInput, match=r"no digit found: (the image is uniform \(its brightness varies by only \d+%\)"
                                       r"|only a few isolated specks)"):
        digit_tensor(make())


def test_mnist_normalise_fits_a_20px_box_keeping_aspect_ratio():
    ink = np.zeros((300, 200), np.float32)
    ink[50:250, 90:140] = 1.0  # a 200x50 box drawn with a 20 px pen (2 px of the 20 px box: MNIST's width), off-centre
    ink[70:230, 110:120] = 0.0
    out = mnist_normalise(ink)
    assert ink_box(out) == (20, 5)
    assert centre_of_mass(out) == pytest.approx((14.0, 14.0), abs=0.5 + 1e-5)  # half a pixel of rounding, plus float32 resize noise
    tiny = np.zeros((50, 50), np.float32)
    tiny[3:7, 40:42] = 1.0  # a 4x2 speck is enlarged to 20x10
    assert ink_box(mnist_normalise(tiny)) == (20, 10)


def test_marker_strokes_are_narrowed_and_hairlines_widened_to_mnist_widths(mnist_digits):
    """A digit drawn with a marker (4 px of the 20 px box) or a hairline pen (0.5 px) comes out with strokes in
    MNIST's own range (median 1.8 px, 5th-97th percentile 1.2-3.0 px)."""
    from preprocessing.digits import _stroke_width
    from bench.digit_renderings import reweighted
    for pen in (4.0, 0.5):
        widths = [_stroke_width(mnist_normalise(reweighted(upscaled(digit, 8), pen)) > 0.5) for digit in mnist_digits]
        assert 1.5 <= float(np.median(widths)) <= 3.0, (pen, widths)
        # a marker that filled a 6's or an 8's loop leaves a blob no narrowing can reopen; it still gets thinner
        assert 1.2 <= min(widths) and max(widths) <= (4.6 if pen > 1 else 3.0), (pen, widths)


def test_mnist_normalise_blank_raises():
    with pytest.raises(UndecodableInput, match="no digit found"):
        mnist_normalise(np.zeros((28, 28), np.float32))


# ------------------------------------------------------------------------------------------------ to_ink

def test_ink_map_shape_range_and_polarity(mnist_digits):
    img = Image.fromarray(255 - mnist_digits[0])  # black on white
    ink = to_ink(img)
    assert ink.shape == (28, 28) and ink.dtype == np.float32
    assert ink.min() == 0.0 and ink.max() == 1.0
    assert np.corrcoef(ink.ravel(), mnist_digits[0].ravel())[0, 1] > 0.99


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_wide_modes_are_scaled_not_clipped(mode, mnist_digits):
    digit = upscaled(mnist_digits[4], 2)
    scale = {"I;16": 65535.0, "I": 65535.0, "F": 1.0}[mode]
    values = (0.9 - 0.6 * digit) * scale  # ink 0.3, paper 0.9 of full scale: all above 255 for 16-bit
    arr = values.astype(np.uint16) if mode == "I;16" else values.astype(np.int32 if mode == "I" else np.float32)
    img = Image.fromarray(arr)
    assert img.mode == mode
    eight_bit = Image.fromarray(np.round((0.9 - 0.6 * digit) * 255).astype(np.uint8))
    np.testing.assert_allclose(to_ink(img), to_ink(eight_bit), atol=0.03)


def test_transparent_canvas_with_black_rgb_uses_alpha(mnist_digits):
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = mnist_digits[5]
    ink = to_ink(Image.fromarray(rgba, "RGBA"))
    assert np.corrcoef(ink.ravel(), mnist_digits[5].ravel())[0, 1] > 0.99


@pytest.mark.parametrize("colour", [(0, 0, 255), (255, 230, 0), (128, 128, 128)])
def test_coloured_strokes_on_transparent_canvas(colour, mnist_digits):
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = mnist_digits[8]
    ink = to_ink(Image.fromarray(rgba, "RGBA"))
    assert np.corrcoef(ink.ravel(), mnist_digits[8].ravel())[0, 1] > 0.99


def test_photo_with_transparent_margins_keeps_its_paper_as_background(mnist_digits):
    rgba = np.zeros((60, 60, 4), np.uint8)
    rgba[5:55, 5:55] = (240, 240, 240, 255)  # opaque white paper, clear margins all round
    rgba[16:44, 16:44, :3] -= (mnist_digits[9][..., None] * 0.9).astype(np.uint8)
    ink = to_ink(Image.fromarray(rgba, "RGBA"))
    assert ink[:16].max() == 0 and ink[44:].max() == 0  # margins and bare paper are not ink
    assert np.corrcoef(ink[16:44, 16:44].ravel(), mnist_digits[9].ravel())[0, 1] > 0.95


def test_palette_with_transparency_and_other_modes(mnist_digits):
    base = Image.fromarray(255 - mnist_digits[6])
    reference_ink = to_ink(base)
    p_transparent = Image.fromarray(np.where(mnist_digits[6] > 127, 1, 0).astype(np.uint8), "P")
    p_transparent.putpalette([255, 255, 255, 0, 0, 0])
    p_transparent.info["transparency"] = 0
    gif = Image.open(io.BytesIO(encode(p_transparent, "GIF", transparency=0)))
    for img in (base.convert("RGB"), base.convert("LA"), base.convert("RGBA"), base.convert("CMYK"),
                base.convert("P"), base.point(lambda v: 255 if v > 127 else 0).convert("1"), gif):
        ink = to_ink(img)
        assert ink.shape == (28, 28)
        assert np.corrcoef(ink.ravel(), reference_ink.ravel())[0, 1] > 0.9, img.mode


# ------------------------------------------------------------------------------------------------ open_image

@pytest.mark.parametrize("fmt,mode", [("PNG", "RGB"), ("JPEG", "RGB"), ("GIF", "P"), ("BMP", "RGB"),
                                      ("WEBP", "RGB"), ("PNG", "LA"), ("PNG", "I;16")])
def test_accepted_formats_open_fully_loaded(fmt, mode):
    img = Image.new("RGB", (40, 30), (200, 100, 50))
    img = img.convert(mode) if mode != "I;16" else Image.fromarray(np.full((30, 40), 1000, np.uint16))
    out = open_image(encode(img, fmt), LIMIT)
    assert out.size == (40, 30) and out.format == fmt
    assert out.im is not None  # decoded, not lazy


def test_animated_gif_gives_the_first_frame():
    frames = [Image.new("L", (20, 20), v) for v in (10, 200, 90)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    img = open_image(data, LIMIT)
    assert np.asarray(img.convert("L")).mean() == pytest.approx(10, abs=2)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (60, 20), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    assert open_image(encode(img, "JPEG", exif=exif), LIMIT).size == (20, 60)


@pytest.mark.parametrize("data", [
    b"",
    b"hello, this is plain text, definitely not an image\n" * 3,
    bytes(np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8)),
    b"PK\x03\x04" + bytes(100),
    b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n",
], ids=["empty", "text", "random", "zip", "pdf"])
def test_non_images_are_unsupported_media_type(data):
    with pytest.raises(UnsupportedInput, match="not an image"):
        open_image(data, LIMIT)


def test_pdf_and_heic_are_named():
    with pytest.raises(UnsupportedInput, match="PDF"):
        open_image(b"%PDF-1.4\n" + bytes(64), LIMIT)
    with pytest.raises(UnsupportedInput, match="HEIC"):
        open_image(b"\x00\x00\x00\x18ftypheic" + bytes(64), LIMIT)


@pytest.mark.parametrize("fmt", ["TIFF", "ICO", "PPM"])
def test_other_image_formats_are_unsupported_and_named(fmt):
    data = encode(Image.new("RGB", (32, 32), "red"), fmt)
    with pytest.raises(UnsupportedInput, match=f"{fmt}.*PNG, JPEG, GIF, BMP, WEBP"):
        open_image(data, LIMIT)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP"])
def test_truncated_images_are_bad_input_quickly(fmt):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    data = encode(img.convert("P") if fmt == "GIF" else img, fmt)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    start = time.perf_counter()
    with pytest.raises(UndecodableInput, match="truncated"):
        open_image(data[: len(data) // 2], LIMIT)
    assert time.perf_counter() - start < 1.0


def test_corrupted_png_data_is_bad_input():
    data = bytearray(encode(Image.new("RGB", (64, 64), "blue"), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 8: idat + 16] = b"\xff" * 8
    with pytest.raises(UndecodableInput, match="could not be decoded|truncated"):
        open_image(bytes(data), LIMIT)


def test_signature_with_garbage_header_is_bad_input():
    with pytest.raises(UndecodableInput):
        open_image(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, LIMIT)
    with pytest.raises(UndecodableInput):
        open_image(b"GIF89a" + b"\x00" * 3, LIMIT)


@pytest.fixture(scope="module")
def bomb_20k() -> bytes:
    data = bilevel_png(20_000, 20_000)  # 400 Mpx, about 50 KB on the wire
    assert len(data) < 200_000
    return data


def test_decompression_bomb_is_rejected_from_the_header(bomb_20k):
    start = time.perf_counter()
    with pytest.raises(OversizedInput) as err:
        open_image(bomb_20k, LIMIT)
    assert time.perf_counter() - start < 2.0  # bounded: nothing was decoded
    assert "400000000" in err.value.message and str(LIMIT) in err.value.message


@pytest.mark.parametrize("side", [8_000, 10_000])  # 64 Mpx: below PIL's own warning; 100 Mpx: above it
def test_images_over_the_pixel_limit_are_rejected_without_warnings(side):
    data = bilevel_png(side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        start = time.perf_counter()
        with pytest.raises(OversizedInput) as err:
            open_image(data, LIMIT)
        assert time.perf_counter() - start < 2.0
    assert f"{side}x{side}" in err.value.message and str(LIMIT) in err.value.message


def test_image_exactly_at_the_pixel_limit_passes():
    data = bilevel_png(100, 50)
    assert open_image(data, max_pixels=5000).size == (100, 50)
    with pytest.raises(OversizedInput, match="5000 pixels.*4999"):
        open_image(data, max_pixels=4999)


def test_absurd_single_side_is_rejected():
    with pytest.raises(OversizedInput, match="side"):
        open_image(bilevel_png(40_000, 1), max_pixels=10**9)


# ------------------------------------------------------------------------------------------------ base64

PAYLOAD = encode(Image.new("RGB", (7, 5), (251, 239, 191)), "PNG") + bytes(range(256))


@pytest.mark.parametrize("text", [
    base64.b64encode(PAYLOAD).decode(),
    base64.urlsafe_b64encode(PAYLOAD).decode(),
    base64.b64encode(PAYLOAD).decode().rstrip("="),
    base64.urlsafe_b64encode(PAYLOAD).decode().rstrip("="),
    base64.encodebytes(PAYLOAD).decode(),  # MIME: newlines every 76 characters
    "  \n" + base64.b64encode(PAYLOAD).decode() + "\n",
    "data:image/png;base64," + base64.b64encode(PAYLOAD).decode(),
    "DATA:image/PNG;charset=x;BASE64," + base64.urlsafe_b64encode(PAYLOAD).decode().rstrip("="),
], ids=["plain", "urlsafe", "no-padding", "urlsafe-no-padding", "mime", "whitespace", "data-url", "data-url-odd"])
def test_base64_variants_decode(text):
    assert "+" in base64.b64encode(PAYLOAD).decode() and "/" in base64.b64encode(PAYLOAD).decode()
    assert decode_base64_image(text) == PAYLOAD


@pytest.mark.parametrize("text", ["", "   ", "not base64 at all!", "abcde", "ab=cd", "====",
                                  "data:image/png;base64,%%%", "data:image/png,iVBORw0KGgo", "data:image/png;base64"])
def test_bad_base64_is_bad_input(text):
    with pytest.raises(UndecodableInput, match="not valid base64"):
        decode_base64_image(text)


@pytest.mark.parametrize("text", ["data:text/plain;base64,aGVsbG8=", "data:application/pdf;base64,JVBERi0=",
                                  "data:;base64,aGVsbG8="])
def test_non_image_data_url_is_unsupported_media_type(text):
    with pytest.raises(UnsupportedInput, match="not an image"):
        decode_base64_image(text)


def test_base64_roundtrip_through_open_image(mnist_digits):
    data = encode(Image.fromarray(mnist_digits[1]), "PNG")
    img = open_image(decode_base64_image("data:image/png;base64," + base64.b64encode(data).decode()), LIMIT)
    assert np.array_equal(np.asarray(img), mnist_digits[1])


# ------------------------------------------------------------------------------------------------ objects

def cifar_expected(arr: np.ndarray) -> torch.Tensor:
    mean = torch.tensor(CIFAR_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(3, 1, 1)
    return (torch.from_numpy(arr).permute(2, 0, 1) / 255 - mean) / std


def test_32x32_input_is_exactly_the_training_normalisation():
    arr = np.random.default_rng(5).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    img = open_image(encode(Image.fromarray(arr), "PNG"), LIMIT)
    t = object_tensor(img)
    assert t.shape == (3, 32, 32) and t.dtype == torch.float32
    assert torch.equal(t, normalise_cifar_uint8(arr))
    assert torch.equal(t, cifar_expected(arr))


def test_normalise_cifar_uint8_batches():
    batch = np.random.default_rng(6).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    out = normalise_cifar_uint8(batch)
    assert out.shape == (4, 3, 32, 32) and out.is_contiguous()
    for i in range(4):
        assert torch.equal(out[i], cifar_expected(batch[i]))


def test_normalise_cifar_uint8_rejects_other_arrays():
    for bad in (np.zeros((32, 32), np.uint8), np.zeros((32, 32, 3), np.float32), np.zeros((32, 32, 4), np.uint8)):
        with pytest.raises(ValueError):
            normalise_cifar_uint8(bad)


def test_large_rgba_is_composited_on_white_and_resized():
    rgba = np.zeros((480, 640, 4), np.uint8)  # fully transparent...
    rgba[140:340, 220:420] = (255, 0, 0, 255)  # ...except an opaque red square in the middle
    t = object_tensor(open_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"), LIMIT))
    assert t.shape == (3, 32, 32) and torch.isfinite(t).all()
    white = cifar_expected(np.full((1, 1, 3), 255, np.uint8))[:, 0, 0]
    red = cifar_expected(np.array([[[255, 0, 0]]], np.uint8))[:, 0, 0]
    torch.testing.assert_close(t[:, 0, 0], white, atol=1e-4, rtol=0)
    torch.testing.assert_close(t[:, 16, 16], red, atol=1e-4, rtol=0)


def test_centre_square_crop():
    arr = np.zeros((32, 96, 3), np.uint8)
    arr[:, :32] = (255, 0, 0)
    arr[:, 32:64] = (0, 255, 0)
    arr[:, 64:] = (0, 0, 255)
    t = object_tensor(Image.fromarray(arr))
    torch.testing.assert_close(t, cifar_expected(np.broadcast_to(np.array([0, 255, 0], np.uint8),
                                                                  (32, 32, 3)).copy()))


def test_sixteen_bit_is_scaled_not_clipped():
    img = Image.fromarray(np.full((64, 48), 128 * 257, np.uint16))
    assert img.mode == "I;16"
    t = object_tensor(img)
    torch.testing.assert_close(t, cifar_expected(np.full((32, 32, 3), 128, np.uint8)))


def test_downsampling_is_antialiased():
    checker = (np.indices((256, 256)).sum(axis=0) % 2 * 255).astype(np.uint8)
    t = object_tensor(Image.fromarray(checker).convert("RGB"))
    grey = cifar_expected(np.full((32, 32, 3), 128, np.uint8))
    assert (t - grey).abs().max() < 0.1  # aliasing (nearest) would give pure black/white


@pytest.mark.parametrize("mode", ["P", "L", "1", "LA", "CMYK", "RGBA", "I", "F"])
def test_object_tensor_accepts_every_mode(mode):
    t = object_tensor(Image.new("RGB", (50, 40), (10, 120, 240)).convert(mode))
    assert t.shape == (3, 32, 32) and t.dtype == torch.float32 and torch.isfinite(t).all()

