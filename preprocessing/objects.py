"""CIFAR-style object input: RGB on white, centre square, antialiased resize to 32x32, normalised.

    object_tensor(img)              PIL image -> (3, 32, 32) tensor, CIFAR_MEAN/CIFAR_STD normalised
    normalise_cifar_uint8(arr)      (H, W, 3) or (N, H, W, 3) uint8 -> (3, H, W) / (N, 3, H, W) tensor (training too)
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from preprocessing.decoding import to_rgb
from models.objects import CIFAR_MEAN, CIFAR_STD

OBJECT_SIZE = 32

_CIFAR_MEAN = torch.tensor(CIFAR_MEAN, dtype=torch.float32).view(3, 1, 1)
_CIFAR_STD = torch.tensor(CIFAR_STD, dtype=torch.float32).view(3, 1, 1)


def object_tensor(img: Image.Image) -> torch.Tensor:
    """(3, 32, 32) float32 CIFAR-style input: RGB on white, centre square, antialiased resize, normalised."""
    rgb = to_rgb(img)
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


__all__ = ["OBJECT_SIZE", "object_tensor", "normalise_cifar_uint8"]
