"""Image decoding with limits, and the pixel conversions every image model shares.

Pure functions (no web framework): every client problem is raised as an InputError (preprocessing/errors.py).

    decode_base64_image(value)      base64 / data: URL -> bytes
    open_image(data, max_pixels)    bytes -> one fully loaded PIL image (first frame), safely
    memory_returned_after(pixels)   gives the heap back to the OS once the last large decode in flight ends
    declared_pixels(data)           width x height from the header alone
    luminance(img)                  PIL image -> (H, W) float32 grey level in [0, 1] (alpha composited)
    to_rgb(img)                     PIL image -> 8-bit RGB (alpha composited onto white)
"""
from __future__ import annotations

import base64
import binascii
import ctypes
import ctypes.util
import io
import re
import struct
import threading
import warnings
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from preprocessing.errors import OversizedInput, UndecodableInput, UnsupportedInput

# Truncated files must fail loudly (this is PIL's default; never let anything turn it on here).
ImageFile.LOAD_TRUNCATED_IMAGES = False

ACCEPTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
_FORMAT_ALIASES = {"MPO": "JPEG"}  # multi-picture JPEGs from phone cameras are JPEGs
_ACCEPTED_TEXT = ", ".join(ACCEPTED_FORMATS)
MAX_IMAGE_SIDE = 32_768  # absurd single dimensions are refused whatever the pixel budget


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
        raise UndecodableInput("image is not valid base64: it is empty")
    return data


def _data_url_payload(url: str) -> str:
    match = _DATA_URL.match(url)
    if match is None:
        raise UndecodableInput("image is not valid base64: malformed data URL (no ',' before the data)")
    params = [p.strip().lower() for p in match["meta"].split(";")]
    media_type = params[0] or "text/plain"  # RFC 2397 default
    if not media_type.startswith("image/"):
        raise UnsupportedInput(f"data URL media type {media_type!r} is not an image")
    if "base64" not in params[1:]:
        raise UndecodableInput("image is not valid base64: the data URL is not base64-encoded (';base64' missing)")
    return match["data"]


def _b64decode(text: str) -> bytes:
    compact = _BASE64_JUNK.sub("", text).replace("-", "+").replace("_", "/").rstrip("=")
    if len(compact) % 4 == 1:
        raise UndecodableInput("image is not valid base64: wrong length")
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UndecodableInput(f"image is not valid base64: {exc}") from None


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


def open_image(data: bytes, max_pixels: int, at_least: int | None = None) -> Image.Image:
    """Decode one PNG/JPEG/GIF/BMP/WebP image (first frame), checking its size before decoding any pixels.

    at_least: the caller only needs this many pixels on each side, so a JPEG is decoded at 1/2, 1/4 or 1/8 scale
    when it is that much larger (libjpeg scales in the DCT: a phone photo costs a sixteenth of the memory)."""
    if not data:
        raise UnsupportedInput(f"not an image: the body is empty (accepted formats: {_ACCEPTED_TEXT})")
    img = _open_lazily(data, max_pixels)
    _check_format(img)
    _check_size(img.size, max_pixels)
    if at_least is not None and img.format in ("JPEG", "MPO"):
        img.draft(None, (at_least, at_least))
    _load(img, data, max_pixels)
    _apply_exif_orientation(img)
    return img


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def declared_pixels(data: bytes) -> int | None:
    """Width x height from the header alone (no pixels decoded); None when the header is unreadable."""
    if data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
        # A PNG's first chunk is IHDR, width and height at fixed offsets: read here on every predict (which
        # way to decode), a PIL open would cost more than decoding a canvas-sized digit.
        width, height = struct.unpack(">II", data[16:24])
        return width * height
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
        raise UnsupportedInput(f"not an image: {what} (accepted formats: {_ACCEPTED_TEXT})") from None


def _bomb_error(exc: Exception, max_pixels: int) -> OversizedInput:
    match = re.search(r"\((\d+) pixels\)", str(exc))
    limit = min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or max_pixels))
    return OversizedInput(f"image is too large: {match[1] if match else 'too many'} pixels, "
                           f"over the limit of {limit} pixels")


def _check_format(img: Image.Image) -> None:
    fmt = _FORMAT_ALIASES.get(img.format, img.format)
    if fmt not in ACCEPTED_FORMATS:
        raise UnsupportedInput(f"unsupported image format {img.format} (accepted formats: {_ACCEPTED_TEXT})")


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise UndecodableInput(f"image could not be decoded: it has no pixels ({width}x{height})")
    if max(width, height) > MAX_IMAGE_SIDE:
        raise OversizedInput(f"image is {width}x{height} pixels: a side over {MAX_IMAGE_SIDE} pixels is not accepted")
    if width * height > max_pixels:
        raise OversizedInput(f"image is {width}x{height} = {width * height} pixels, "
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


def _decode_error(exc: Exception, data: bytes) -> UndecodableInput:
    fmt = _sniff_accepted(data) or "image"
    if _is_truncation(exc, data):
        return UndecodableInput(f"image is truncated: the {fmt} data ends early")
    return UndecodableInput(f"image could not be decoded: {str(exc) or type(exc).__name__}")


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


# --------------------------------------------------------------------------------------------- memory

LARGE_DECODE_PIXELS = 4_000_000  # decodes above this many pixels hand their memory back when they end
_large_in_flight = 0
_large_lock = threading.Lock()
_libc = None


@contextmanager
def memory_returned_after(pixels: int | None):
    """Around the decoding and preprocessing of one image: when it was large and no other large one is still
    being worked on, the C heap's free pages go back to the OS (glibc keeps them in its per-thread arenas
    otherwise, and 16 concurrent 36-megapixel uploads left the process at 4 GiB)."""
    global _large_in_flight
    if pixels is None or pixels < LARGE_DECODE_PIXELS:
        yield
        return
    with _large_lock:
        _large_in_flight += 1
    try:
        yield
    finally:
        with _large_lock:
            _large_in_flight -= 1
            last = _large_in_flight == 0
        if last:
            _trim_heap()


def _trim_heap() -> None:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else False
        except OSError:
            _libc = False
    trim = getattr(_libc, "malloc_trim", None) if _libc else None
    if trim is not None:  # glibc only; musl and macOS return memory by themselves
        trim(0)


# --------------------------------------------------------------------------------------------- pixels

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def has_alpha(img: Image.Image) -> bool:
    return img.mode in ALPHA_MODES or img.has_transparency_data


def luminance(img: Image.Image) -> np.ndarray:
    """Grey level in [0, 1]; transparent areas are filled with a backdrop that contrasts with the strokes."""
    if img.mode in SIXTEEN_BIT_MODES:
        return np.asarray(img).astype(np.float32) / 65535.0
    if img.mode in ("I", "F"):
        return _scaled_wide(np.asarray(img).astype(np.float32))
    if has_alpha(img):
        return _composite_alpha(img)
    return np.asarray(_convert(img, "L"), dtype=np.float32) / 255.0


def _convert(img: Image.Image, mode: str) -> Image.Image:
    if img.mode == mode:
        return img
    try:
        return img.convert(mode)
    except ValueError:  # exotic modes (LAB, ...) PIL cannot convert directly
        raise UndecodableInput(f"image could not be decoded: pixel mode {img.mode} is not supported") from None


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


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB: transparency composited onto white, 16-bit/float grey scaled (not clipped)."""
    if img.mode in SIXTEEN_BIT_MODES or img.mode in ("I", "F"):
        grey = luminance(img)
        return Image.fromarray(np.round(grey * 255).astype(np.uint8), mode="L").convert("RGB")
    if has_alpha(img):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return _convert(img, "RGB")




__all__ = ["ACCEPTED_FORMATS", "decode_base64_image", "open_image", "declared_pixels", "memory_returned_after",
           "luminance", "to_rgb"]
