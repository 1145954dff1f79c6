"""Tensors of the Open Inference Protocol: datatypes, JSON data and the binary tensor data extension.

A tensor's elements travel either in JSON (`data`: nested or flat, row-major) or, with the binary tensor data
extension, as raw little-endian bytes after the JSON header (`parameters.binary_data_size`); a BYTES element in
binary form is a 4-byte little-endian length and then its bytes. Everything here raises BadInput with a sentence
naming the tensor, never a numpy error.
"""
import math
import struct
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from app.core.errors import BadInput

BYTES = "BYTES"
# The protocol's fixed-size datatypes and their little-endian numpy dtypes (BF16 has no numpy dtype).
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
DATATYPES = (*NUMPY_DTYPES, "BF16", BYTES)
_LENGTH = struct.Struct("<I")


@dataclass
class Tensor:
    """One input as the request gave it: a numpy array of its shape, or a list of BYTES elements: bytes from
    binary data, str from JSON (which cannot carry raw bytes: an image there is base64 text)."""

    name: str
    datatype: str
    shape: list[int]
    values: np.ndarray | list[bytes | str]

    @property
    def batch_size(self) -> int:
        return self.shape[0] if self.shape else 1


def element_count(shape: list[int]) -> int:
    return math.prod(shape)


def check_datatype(name: str, datatype: str) -> None:
    if datatype not in DATATYPES:
        raise BadInput(f"input '{name}': unknown datatype '{datatype}'; the protocol's datatypes are "
                       f"{', '.join(DATATYPES)}")
    if datatype == "BF16":
        raise BadInput(f"input '{name}': BF16 is not accepted; send FP32")


def from_json(name: str, datatype: str, shape: list[int], data: Any) -> Tensor:
    """`data` as JSON gave it (nested per the shape or flat) -> a Tensor of `shape`."""
    check_datatype(name, datatype)
    flat = _flatten(name, data)
    expected = element_count(shape)
    if len(flat) != expected:
        raise BadInput(f"input '{name}': shape {shape} holds {expected} elements but 'data' has {len(flat)}")
    if datatype == BYTES:
        return Tensor(name, datatype, shape, [_bytes_element(name, value) for value in flat])
    if any(isinstance(value, (str, list, dict)) or value is None for value in flat):
        raise BadInput(f"input '{name}': {datatype} data must be numbers" +
                       (" or booleans" if datatype == "BOOL" else ""))
    try:
        array = np.asarray(flat, dtype=NUMPY_DTYPES[datatype])
    except (OverflowError, ValueError, TypeError):
        raise BadInput(f"input '{name}': a value does not fit {datatype}") from None
    return Tensor(name, datatype, shape, array.reshape(shape))


def from_binary(name: str, datatype: str, shape: list[int], chunk: bytes) -> Tensor:
    """The extension's raw bytes for one input -> a Tensor of `shape`."""
    check_datatype(name, datatype)
    expected = element_count(shape)
    if datatype == BYTES:
        elements = split_bytes_elements(name, chunk)
        if len(elements) != expected:
            raise BadInput(f"input '{name}': shape {shape} holds {expected} elements but its binary data has "
                           f"{len(elements)}")
        return Tensor(name, datatype, shape, elements)
    dtype = NUMPY_DTYPES[datatype]
    if len(chunk) != expected * dtype.itemsize:
        raise BadInput(f"input '{name}': shape {shape} of {datatype} takes {expected * dtype.itemsize} bytes but "
                       f"binary_data_size is {len(chunk)}")
    return Tensor(name, datatype, shape, np.frombuffer(chunk, dtype=dtype).reshape(shape))


def split_bytes_elements(name: str, chunk: bytes) -> list[bytes]:
    """BYTES in binary form: each element a 4-byte little-endian length, then that many bytes."""
    elements, offset = [], 0
    while offset < len(chunk):
        if offset + _LENGTH.size > len(chunk):
            raise BadInput(f"input '{name}': its binary data ends inside an element's 4-byte length")
        (length,) = _LENGTH.unpack_from(chunk, offset)
        offset += _LENGTH.size
        if offset + length > len(chunk):
            raise BadInput(f"input '{name}': an element says it holds {length} bytes but only "
                           f"{len(chunk) - offset} are left in its binary data")
        elements.append(chunk[offset:offset + length])
        offset += length
    return elements


def bytes_to_binary(elements: list[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(element)) + element for element in elements)


def _flatten(name: str, data: Any) -> list:
    if not isinstance(data, list):
        raise BadInput(f"input '{name}': 'data' must be an array (nested per the shape, or flat)")
    flat: list = []
    stack = [iter(data)]
    while stack:  # iterative: a deeply nested body cannot exhaust the recursion limit
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _bytes_element(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise BadInput(f"input '{name}': BYTES data in JSON must be strings")
    return value


@dataclass
class Output:
    """One response output: its values and whether they travel as binary data after the JSON header."""

    name: str
    datatype: str
    shape: list[int]
    values: np.ndarray | list[bytes]
    binary: bool

    def header(self) -> dict:
        entry = {"name": self.name, "datatype": self.datatype, "shape": self.shape}
        if self.binary:
            entry["parameters"] = {"binary_data_size": len(self.raw)}
        elif self.datatype == BYTES:
            entry["data"] = [value.decode("utf-8") for value in self.values]
        else:
            entry["data"] = self.values.reshape(-1).tolist()
        return entry

    @cached_property
    def raw(self) -> bytes:
        if self.datatype == BYTES:
            return bytes_to_binary(self.values)
        return np.ascontiguousarray(self.values, dtype=NUMPY_DTYPES[self.datatype]).tobytes()
