"""Turning what a caller has into image bytes the server reads: a path, bytes, a file object, a PIL image or a
NumPy array.

Neither PIL nor NumPy is imported here: a PIL image is recognised by its class's module and saved with its own
`save`; a NumPy array by its `dtype`/`shape`/`tobytes` and written as PNG by `encode_png`, a minimal encoder on
zlib (filter 0 on every row, one IDAT chunk), so arrays work without PIL installed.
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any, Union

from model_server_client.errors import InputError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# channels -> PNG colour type: grey, grey + alpha, RGB, RGBA
_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}  # PIL modes PNG stores as they are

ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, Any]


def image_bytes(image: ImageInput) -> bytes:
    """The encoded bytes of one image input. Paths and bytes are sent as they are (the server decodes PNG, JPEG,
    GIF, BMP and WebP); PIL images and arrays are encoded as PNG (lossless)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        if not data:
            raise InputError("the image is empty (0 bytes)")
        return data
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read image {str(path)!r}: {exc.strerror or exc}") from None
        if not data:
            raise InputError(f"image file {str(path)!r} is empty")
        return data
    if _is_pil_image(image):
        return _pil_png(image)
    if _is_array(image):
        return encode_png(image)
    if hasattr(image, "read"):
        data = image.read()
        if isinstance(data, str):
            raise InputError("the file object is open in text mode; open the image with 'rb'")
        return image_bytes(data)
    raise InputError(f"cannot send a {type(image).__name__} as an image: give a path, bytes, a file object opened "
                     "in binary mode, a PIL image or a uint8 NumPy array (HxW or HxWxC)")


def describe(image: ImageInput) -> str:
    """A short name for an input, for messages and multipart file names."""
    if isinstance(image, (str, os.PathLike)):
        return Path(image).name
    return "image.png" if (_is_pil_image(image) or _is_array(image)) else "image"


def media_type(data: bytes) -> str:
    """The image type from the first bytes (the server sniffs it again; this only labels the upload)."""
    if data.startswith(PNG_SIGNATURE):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data.startswith(b"BM"):
        return "image/bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def extension(media: str) -> str:
    return {"image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif", "image/bmp": ".bmp",
            "image/webp": ".webp"}.get(media, "")


# --------------------------------------------------------------------------------------------- PIL

def _is_pil_image(obj: Any) -> bool:
    module = type(obj).__module__ or ""
    return (module == "PIL" or module.startswith("PIL.")) and hasattr(obj, "save") and hasattr(obj, "mode")


def _pil_png(image: Any) -> bytes:
    if image.mode not in _PNG_MODES:  # CMYK, YCbCr, F, I;16B...: PNG cannot store them as they are
        has_alpha = "A" in image.mode or "transparency" in getattr(image, "info", {})
        image = image.convert("RGBA" if has_alpha else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------- NumPy arrays

def _is_array(obj: Any) -> bool:
    return all(hasattr(obj, name) for name in ("dtype", "shape", "tobytes")) and not isinstance(obj, (bytes, str))


def encode_png(array: Any) -> bytes:
    """A uint8 (or bool) array of shape HxW (grey), HxWx1, HxWx2 (grey + alpha), HxWx3 (RGB) or HxWx4 (RGBA) as a
    PNG file. Works on anything with NumPy's dtype, shape and tobytes(); NumPy itself is not imported."""
    dtype = str(array.dtype)
    shape = tuple(int(n) for n in array.shape)
    if dtype == "bool":
        array = array.astype("uint8") * 255
        dtype = "uint8"
    if dtype != "uint8":
        raise InputError(f"a {dtype} array cannot be sent as an image: give uint8 pixels 0..255 "
                         "(e.g. (array * 255).round().astype('uint8') for floats in 0..1)")
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3 or shape[2] not in _COLOUR_TYPES or shape[0] < 1 or shape[1] < 1:
        raise InputError(f"an array of shape {tuple(array.shape)} is not an image: expected HxW (grey) or HxWxC "
                         "with C = 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA)")
    height, width, channels = shape
    pixels = array.tobytes()  # C order, whatever the array's strides
    stride = width * channels
    raw = b"".join(b"\x00" + pixels[row * stride:(row + 1) * stride] for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOUR_TYPES[channels], 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
