"""Image decoding with limits, MNIST-style digit normalisation and CIFAR-style object resizing.

Pure functions (no web framework): every client problem is raised as an APIError subclass.

    decode_base64_image(value)      base64 / data: URL -> bytes
    open_image(data, max_pixels)    bytes -> one fully loaded PIL image (first frame), safely
    to_ink(img)                     PIL image -> (H, W) float32 ink map in [0, 1], 1 = ink
    mnist_normalise(ink)            ink map -> (28, 28) float32, MNIST framing (20x20 box, centre of mass at 14,14)
    digit_tensor(img)               PIL image -> (1, 28, 28) tensor, MNIST_MEAN/MNIST_STD normalised
    normalise_cifar_uint8(arr)      (H, W, 3) or (N, H, W, 3) uint8 -> (3, H, W) / (N, 3, H, W) normalised tensor
    object_tensor(img)              PIL image -> (3, 32, 32) tensor, CIFAR_MEAN/CIFAR_STD normalised
"""
from __future__ import annotations

import base64
import binascii
import io
import math
import re
import warnings

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from app.core.errors import BadInput, PayloadTooLarge, UnsupportedMediaType
from models.digits import MNIST_MEAN, MNIST_STD
from models.objects import CIFAR_MEAN, CIFAR_STD

# Truncated files must fail loudly (this is PIL's default; never let anything turn it on here).
ImageFile.LOAD_TRUNCATED_IMAGES = False

ACCEPTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
_FORMAT_ALIASES = {"MPO": "JPEG"}  # multi-picture JPEGs from phone cameras are JPEGs
_ACCEPTED_TEXT = ", ".join(ACCEPTED_FORMATS)
MAX_IMAGE_SIDE = 32_768  # absurd single dimensions are refused whatever the pixel budget

DIGIT_SIZE, DIGIT_BOX = 28, 20
DIGIT_CENTRE = 14.0  # MNIST's mean centre of mass, in pixel-index coordinates
DIGIT_MAX_SIDE = 1024  # larger photos are box-reduced before ink extraction (speed, memory)
OBJECT_SIZE = 32

INK_MIN_CONTRAST = 0.05  # ink must differ from the background by at least this much (of full scale)
INK_NOISE_FACTOR = 2.0  # ... and by this multiple of the border's noise level (95th percentile)
BBOX_THRESHOLD = 0.1  # ink level that counts for the digit's bounding box
MIN_STROKE = 1.2  # px of the 20 px box: thinner strokes are widened to this (about MNIST's 5th percentile)

_CIFAR_MEAN = torch.tensor(CIFAR_MEAN, dtype=torch.float32).view(3, 1, 1)
_CIFAR_STD = torch.tensor(CIFAR_STD, dtype=torch.float32).view(3, 1, 1)

# --------------------------------------------------------------------------------------------- base64

_DATA_URL = re.compile(r"^data:(?P<meta>[^,]*),(?P<data>.*)$", re.DOTALL | re.IGNORECASE)
_BASE64_JUNK = re.compile(r"\s+")


def decode_base64_image(value: str) -> bytes:
    """Plain base64 (standard or urlsafe, padding optional, whitespace ignored) or a data: URL -> bytes."""
    text = (value or "").strip()
    if text[:5].lower() == "data:":
        text = _data_url_payload(text)
    data = _b64decode(text)
    if not data:
        raise BadInput("image is not valid base64: it is empty")
    return data


def _data_url_payload(url: str) -> str:
    match = _DATA_URL.match(url)
    if match is None:
        raise BadInput("image is not valid base64: malformed data URL (no ',' before the data)")
    params = [p.strip().lower() for p in match["meta"].split(";")]
    media_type = params[0] or "text/plain"  # RFC 2397 default
    if not media_type.startswith("image/"):
        raise UnsupportedMediaType(f"data URL media type {media_type!r} is not an image")
    if "base64" not in params[1:]:
        raise BadInput("image is not valid base64: the data URL is not base64-encoded (';base64' missing)")
    return match["data"]


def _b64decode(text: str) -> bytes:
    compact = _BASE64_JUNK.sub("", text).replace("-", "+").replace("_", "/").rstrip("=")
    if len(compact) % 4 == 1:
        raise BadInput("image is not valid base64: wrong length")
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadInput(f"image is not valid base64: {exc}") from None


# --------------------------------------------------------------------------------------------- decoding

_SIGNATURES = (
    (b"\x89PNG", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"),
)
_ISO_BMFF_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF"}


def _sniff_accepted(data: bytes) -> str | None:
    """The accepted format whose signature `data` starts with, if any."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for sig, fmt in _SIGNATURES if data.startswith(sig)), None)


def _sniff_other(data: bytes) -> str | None:
    """Common non-accepted formats PIL cannot identify, for a helpful message."""
    if data.startswith(b"%PDF"):
        return "PDF"
    if data[4:8] == b"ftyp":
        return _ISO_BMFF_BRANDS.get(data[8:12])
    return None


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode one PNG/JPEG/GIF/BMP/WebP image (first frame), checking its size before decoding any pixels."""
    if not data:
        raise UnsupportedMediaType(f"not an image: the body is empty (accepted formats: {_ACCEPTED_TEXT})")
    img = _open_lazily(data, max_pixels)
    _check_format(img)
    _check_size(img.size, max_pixels)
    _load(img, data, max_pixels)
    _apply_exif_orientation(img)
    return img


def declared_pixels(data: bytes) -> int | None:
    """Width x height from the header alone (no pixels decoded); None when the header is unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
    except Exception:  # open_image reports what is wrong; here it only matters that the answer is unknown
        return None
    return width * height


def _open_lazily(data: bytes, max_pixels: int) -> Image.Image:
    """Identify the file and read its header only (PIL's open is lazy)."""
    try:
        with warnings.catch_warnings():
            # Our own per-call limit applies (see _check_size); PIL's global warning is noise here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # PIL's hard stop (2 x Image.MAX_IMAGE_PIXELS, about 179 Mpx) fires inside open(), before our check.
        raise _bomb_error(exc, max_pixels) from None
    except Exception as exc:  # unidentified, or a plugin choked on a malformed header
        if _sniff_accepted(data):
            if isinstance(exc, UnidentifiedImageError):
                exc = SyntaxError(f"invalid {_sniff_accepted(data)} header")
            raise _decode_error(exc, data) from None
        other = _sniff_other(data)
        what = f"{other} files are not supported" if other else "the data is not in a recognised image format"
        raise UnsupportedMediaType(f"not an image: {what} (accepted formats: {_ACCEPTED_TEXT})") from None


def _bomb_error(exc: Exception, max_pixels: int) -> PayloadTooLarge:
    match = re.search(r"\((\d+) pixels\)", str(exc))
    limit = min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or max_pixels))
    return PayloadTooLarge(f"image is too large: {match[1] if match else 'too many'} pixels, "
                           f"over the limit of {limit} pixels")


def _check_format(img: Image.Image) -> None:
    fmt = _FORMAT_ALIASES.get(img.format, img.format)
    if fmt not in ACCEPTED_FORMATS:
        raise UnsupportedMediaType(f"unsupported image format {img.format} (accepted formats: {_ACCEPTED_TEXT})")


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise BadInput(f"image could not be decoded: it has no pixels ({width}x{height})")
    if max(width, height) > MAX_IMAGE_SIDE:
        raise PayloadTooLarge(f"image is {width}x{height} pixels: a side over {MAX_IMAGE_SIDE} pixels is not accepted")
    if width * height > max_pixels:
        raise PayloadTooLarge(f"image is {width}x{height} = {width * height} pixels, "
                              f"over the limit of {max_pixels} pixels")


def _load(img: Image.Image, data: bytes, max_pixels: int) -> None:
    """Decode the pixels of the first frame; any decoder failure is the client's bad input."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(exc, max_pixels) from None
    except Exception as exc:  # OSError, ValueError, SyntaxError, struct.error, EOFError, MemoryError, ...
        raise _decode_error(exc, data) from None


def _decode_error(exc: Exception, data: bytes) -> BadInput:
    fmt = _sniff_accepted(data) or "image"
    if _is_truncation(exc, data):
        return BadInput(f"image is truncated: the {fmt} data ends early")
    return BadInput(f"image could not be decoded: {str(exc) or type(exc).__name__}")


def _is_truncation(exc: Exception, data: bytes) -> bool:
    text = str(exc).lower()
    if isinstance(exc, EOFError) or "truncated" in text or "premature" in text:
        return True
    # RIFF (WebP) declares its length up front; libwebp only says "could not create decoder"
    return data[:4] == b"RIFF" and int.from_bytes(data[4:8], "little") + 8 > len(data)


def _apply_exif_orientation(img: Image.Image) -> None:
    """Phone photos store their rotation in EXIF; a corrupt EXIF block is ignored, not fatal."""
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except Exception:
        pass


# --------------------------------------------------------------------------------------------- ink

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def to_ink(img: Image.Image) -> np.ndarray:
    """(H, W) float32 in [0, 1], 1 = ink, for dark-on-light, light-on-dark and alpha-only images."""
    lum = _luminance(img)
    signed = lum - _background(lum)
    threshold = max(INK_NOISE_FACTOR * float(np.percentile(np.abs(_border(signed)), 95)), INK_MIN_CONTRAST)
    ink = signed if _ink_is_light(signed, threshold) else -signed
    return _clean_ink(ink, threshold)


def _luminance(img: Image.Image) -> np.ndarray:
    """Grey level in [0, 1]; transparent areas are filled with a backdrop that contrasts with the strokes."""
    if img.mode in _SIXTEEN_BIT:
        return np.asarray(img).astype(np.float32) / 65535.0
    if img.mode in ("I", "F"):
        return _scaled_wide(np.asarray(img).astype(np.float32))
    if img.mode in _ALPHA_MODES or img.has_transparency_data:
        return _composite_alpha(img)
    return np.asarray(_convert(img, "L"), dtype=np.float32) / 255.0


def _convert(img: Image.Image, mode: str) -> Image.Image:
    if img.mode == mode:
        return img
    try:
        return img.convert(mode)
    except ValueError:  # exotic modes (LAB, ...) PIL cannot convert directly
        raise BadInput(f"image could not be decoded: pixel mode {img.mode} is not supported") from None


def _scaled_wide(arr: np.ndarray) -> np.ndarray:
    """32-bit int / float data: [0, 1], [0, 255] or [0, 65535] by its range."""
    top = float(arr.max()) if arr.size else 0.0
    scale = 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else 65535.0
    return np.clip(arr / scale, 0.0, 1.0)


def _composite_alpha(img: Image.Image) -> np.ndarray:
    grey_alpha = img.convert("LA") if img.mode in ("LA", "La", "RGBA") else img.convert("RGBA").convert("LA")
    arr = np.asarray(grey_alpha, dtype=np.float32) / 255.0
    grey, alpha = arr[..., 0], arr[..., 1]
    if alpha.min() >= 1.0:
        return grey
    return alpha * grey + (1.0 - alpha) * _backdrop(grey, alpha)


def _backdrop(grey: np.ndarray, alpha: np.ndarray) -> float:
    """Mostly transparent: strokes on a clear canvas, so back them with the opposite of their colour.
    Mostly opaque: a picture with clear margins, so fill the margins with the picture's own background."""
    coverage = float(alpha.mean())
    if coverage < 0.5:
        stroke = float((alpha * grey).sum() / max(float(alpha.sum()), 1e-6))
        return 1.0 if stroke < 0.5 else 0.0
    return float(np.median(grey[alpha >= 0.5]))


def _frame_width(shape: tuple[int, int]) -> int:
    return max(1, min(shape) // 32)  # about 3% of the short side, at least 1 px


def _border(arr: np.ndarray) -> np.ndarray:
    """The pixels of the outer frame."""
    k = _frame_width(arr.shape)
    return np.concatenate([arr[:k].ravel(), arr[-k:].ravel(), arr[k:-k, :k].ravel(), arr[k:-k, -k:].ravel()])


def _background(lum: np.ndarray) -> np.ndarray | float:
    """Paper/board level: the median of the outer frame, tilted by the difference between opposite edges
    (a plane), so that an unevenly lit photo keeps a flat background."""
    h, w = lum.shape
    k = _frame_width(lum.shape)
    level = float(np.median(_border(lum)))
    if min(h, w) <= 2 * k:
        return level
    gx = float(np.median(lum[:, -k:]) - np.median(lum[:, :k])) / (w - k)
    gy = float(np.median(lum[-k:]) - np.median(lum[:k])) / (h - k)
    if gx == 0.0 and gy == 0.0:
        return level
    xs = (np.arange(w, dtype=np.float32) - (w - 1) / 2) * gx
    ys = (np.arange(h, dtype=np.float32) - (h - 1) / 2) * gy
    return level + ys[:, None] + xs[None, :]


def _ink_is_light(signed: np.ndarray, threshold: float) -> bool:
    """Polarity by which side of the background carries more contrast mass."""
    light = np.clip(signed - threshold, 0.0, None).sum()
    dark = np.clip(-signed - threshold, 0.0, None).sum()
    return bool(light > dark)


def _clean_ink(ink: np.ndarray, threshold: float) -> np.ndarray:
    """Drop sub-threshold haze and isolated specks, then stretch so the strongest ink is 1."""
    mask = ink > threshold
    mask &= _box3_count(mask) >= 3  # a speck of one or two pixels is noise, a stroke is not
    if not mask.any():
        return np.zeros(ink.shape, dtype=np.float32)
    peak = float(ink[mask].max())
    out = np.clip((ink - threshold) / max(peak - threshold, 1e-6), 0.0, 1.0) * mask
    return out.astype(np.float32, copy=False)


def _box3_count(mask: np.ndarray) -> np.ndarray:
    """How many pixels of each 3x3 neighbourhood are set."""
    p = np.pad(mask.astype(np.uint8), 1)
    rows = p[:-2] + p[1:-1] + p[2:]
    return rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]


# --------------------------------------------------------------------------------------------- digits

def digit_tensor(img: Image.Image) -> torch.Tensor:
    """(1, 28, 28) float32 MNIST-style input: ink, cropped, 20x20 box, centred by mass, normalised."""
    digit = mnist_normalise(to_ink(_shrink(img, DIGIT_MAX_SIDE)))
    return ((torch.from_numpy(digit) - MNIST_MEAN) / MNIST_STD).unsqueeze(0)


def mnist_normalise(ink: np.ndarray) -> np.ndarray:
    """Ink map -> (28, 28) float32 in [0, 1] framed like MNIST (LeCun et al.): cropped to the ink, scaled so
    the longer side is 20 px, pasted into 28x28 with the centre of mass at (14, 14)."""
    crop = _crop_to_ink(np.asarray(ink, dtype=np.float32))
    crop = _max_pool(crop, max(crop.shape) // (4 * DIGIT_BOX))  # a thin stroke keeps >= 1 px at 4x the box
    crop = _thicken(crop, max(crop.shape) / DIGIT_BOX)
    patch = _fit_box(crop, DIGIT_BOX)
    return _place_by_mass(patch, DIGIT_SIZE, DIGIT_CENTRE)


def _crop_to_ink(ink: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero((ink > BBOX_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((ink > BBOX_THRESHOLD).any(axis=0))
    if rows.size == 0:
        raise BadInput("image contains no ink: the digit image is blank or uniform")
    return np.clip(ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], 0.0, 1.0)


def _thicken(crop: np.ndarray, px_per_box_px: float) -> np.ndarray:
    """Widen hair-thin strokes (a fine pen on a big photo) to MNIST's stroke width; normal ones are left alone."""
    width = _stroke_width(crop > 0.5) / px_per_box_px
    if width == 0.0 or width >= MIN_STROKE:
        return crop
    k = int(round((MIN_STROKE - width) * px_per_box_px)) + 1
    return _max_filter(crop, k) if k >= 2 else crop


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
    if img.mode in _SIXTEEN_BIT:
        img = img.convert("I")
    elif img.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
        has_alpha = img.mode in _ALPHA_MODES or img.has_transparency_data
        img = img.convert("RGBA" if has_alpha else "RGB")
    return img.reduce(factor)


# --------------------------------------------------------------------------------------------- objects

def object_tensor(img: Image.Image) -> torch.Tensor:
    """(3, 32, 32) float32 CIFAR-style input: RGB on white, centre square, antialiased resize, normalised."""
    rgb = _to_rgb(img)
    w, h = rgb.size
    if (w, h) != (OBJECT_SIZE, OBJECT_SIZE):
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        rgb = rgb.resize((OBJECT_SIZE, OBJECT_SIZE), Image.Resampling.LANCZOS,
                         box=(left, top, left + side, top + side), reducing_gap=3.0)
    return normalise_cifar_uint8(np.asarray(rgb))


def normalise_cifar_uint8(arr: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> (3, H, W), or (N, H, W, 3) -> (N, 3, H, W): /255 then CIFAR mean/std (shared with training)."""
    arr = np.asarray(arr)
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or arr.shape[-1] != 3:
        raise ValueError(f"expected uint8 (H, W, 3) or (N, H, W, 3), got {arr.dtype} {arr.shape}")
    t = torch.from_numpy(arr.copy())  # a writable copy (PIL's arrays are read-only)
    t = t.permute(2, 0, 1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
    return ((t / 255 - _CIFAR_MEAN) / _CIFAR_STD).contiguous()


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB: transparency composited onto white, 16-bit/float grey scaled (not clipped)."""
    if img.mode in _SIXTEEN_BIT or img.mode in ("I", "F"):
        grey = _luminance(img)
        return Image.fromarray(np.round(grey * 255).astype(np.uint8), mode="L").convert("RGB")
    if img.mode in _ALPHA_MODES or img.has_transparency_data:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return _convert(img, "RGB")


__all__ = [
    "ACCEPTED_FORMATS", "decode_base64_image", "open_image", "to_ink", "mnist_normalise",
    "digit_tensor", "normalise_cifar_uint8", "object_tensor",
]
