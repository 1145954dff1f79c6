"""VGG-19 convolutional features for neural style transfer (Gatys et al.), Caffe weight convention.

`VGG19Features` has torchvision's `vgg19().features` layout (same module indices, so a torchvision-style
state_dict loads into it) truncated to the layers whose weights are available:

    weights/vgg19_features_0-16.pth   conv1_1..conv3_4 (indices 0..16; ReLU relu3_4 = index 17 is free)
    a full VGG-19 features state_dict conv1_1..conv5_4 (indices 0..34), e.g. set by STYLE_VGG_WEIGHTS

ReLUs are not in-place (style transfer reads conv outputs that a later in-place ReLU would overwrite).
The weights are the original Oxford/Caffe ones: inputs are BGR, 0..255, mean-subtracted, no std
(`caffe_preprocess` / `caffe_deprocess`). torchvision's own retrained vgg19 weights use another convention.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

# (name, index in torchvision's vgg19().features) in network order; pools are "pool1".."pool5".
_CFG = [(1, 2), (2, 2), (3, 4), (4, 4), (5, 4)]  # (block, convs per block)


def _layer_table() -> list[tuple[str, int, str]]:
    """[(name, index, kind)] for the whole of vgg19().features (37 modules)."""
    table, index = [], 0
    for block, convs in _CFG:
        for i in range(1, convs + 1):
            table.append((f"conv{block}_{i}", index, "conv"))
            table.append((f"relu{block}_{i}", index + 1, "relu"))
            index += 2
        table.append((f"pool{block}", index, "pool"))
        index += 1
    return table


LAYERS: list[tuple[str, int, str]] = _layer_table()
LAYER_INDEX: dict[str, int] = {name: index for name, index, _ in LAYERS}
LAYER_NAMES: list[str] = [name for name, _, _ in LAYERS]
CONV_INDICES: list[int] = [index for _, index, kind in LAYERS if kind == "conv"]

PARTIAL_LAST_CONV = LAYER_INDEX["conv3_4"]  # 16: what weights/vgg19_features_0-16.pth holds
FULL_LAST_CONV = LAYER_INDEX["conv5_4"]  # 34

# Caffe convention: B, G, R means on the 0..255 scale.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def caffe_preprocess(rgb01: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> BGR, 0..255, per-channel mean subtracted (the Caffe VGG input)."""
    mean = torch.tensor(CAFFE_MEAN_BGR, dtype=rgb01.dtype, device=rgb01.device).view(1, 3, 1, 1)
    return rgb01.flip(1) * 255.0 - mean


def caffe_deprocess(bgr: torch.Tensor) -> torch.Tensor:
    """Inverse of caffe_preprocess: Caffe input -> (N, 3, H, W) RGB in [0, 1] (not clamped)."""
    mean = torch.tensor(CAFFE_MEAN_BGR, dtype=bgr.dtype, device=bgr.device).view(1, 3, 1, 1)
    return ((bgr + mean) / 255.0).flip(1)


def _channels(last_conv: int) -> list[tuple[int, int, int]]:
    """[(index, in_channels, out_channels)] for every conv up to `last_conv`."""
    widths = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}
    out, c_in = [], 3
    for name, index, kind in LAYERS:
        if kind != "conv" or index > last_conv:
            continue
        c_out = widths[int(name[4])]
        out.append((index, c_in, c_out))
        c_in = c_out
    return out


class VGG19Features(nn.Sequential):
    """vgg19().features[: last_conv + 2] (up to and including the ReLU after `last_conv`), parameter-free modules
    (ReLU, max-pool) in their torchvision positions, so `state_dict()` keys are torchvision's ("0.weight", ...)."""

    def __init__(self, last_conv: int = PARTIAL_LAST_CONV):
        if last_conv not in CONV_INDICES:
            raise ValueError(f"last_conv must be a conv index of vgg19().features, got {last_conv}")
        convs = {index: (c_in, c_out) for index, c_in, c_out in _channels(last_conv)}
        modules: list[nn.Module] = []
        for name, index, kind in LAYERS:
            if index > last_conv + 1:
                break
            if kind == "conv":
                modules.append(nn.Conv2d(*convs[index], kernel_size=3, padding=1))
            elif kind == "relu":
                modules.append(nn.ReLU(inplace=False))
            else:
                modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
        super().__init__(*modules)
        self.last_conv = last_conv
        self.layer_names = [name for name, index, _ in LAYERS if index <= last_conv + 1]

    @property
    def is_full(self) -> bool:
        return self.last_conv >= FULL_LAST_CONV

    def has_layer(self, name: str) -> bool:
        return name in LAYER_INDEX and LAYER_INDEX[name] < len(self)

    def extract(self, x: torch.Tensor, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """The outputs of the named layers for input x (Caffe convention); runs only as deep as needed."""
        wanted: dict[int, str] = {}
        for name in names:
            if not self.has_layer(name):
                raise KeyError(f"layer {name!r} is not available (this VGG has {self.layer_names[0]}.."
                               f"{self.layer_names[-1]})")
            wanted[LAYER_INDEX[name]] = name
        out: dict[str, torch.Tensor] = {}
        if not wanted:
            return out
        deepest = max(wanted)
        for index, module in enumerate(self):
            x = module(x)
            if index in wanted:
                out[wanted[index]] = x
            if index >= deepest:
                break
        return out

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]) -> "VGG19Features":
        """Build the deepest network the state_dict covers and load it strictly.

        Accepts the partial file (keys 0..16), a full features state_dict (keys 0..34) or a whole torchvision-layout
        VGG-19 state_dict (keys "features.N.*" plus "classifier.*", which is ignored)."""
        sd = _features_only(state_dict)
        indices = sorted({int(key.split(".", 1)[0]) for key in sd})
        if not indices or indices[0] != 0:
            raise ValueError("not a VGG-19 features state_dict: no conv1_1 ('0.weight')")
        last = indices[-1]
        if last not in (PARTIAL_LAST_CONV, FULL_LAST_CONV):
            # Any other prefix ending on a conv is accepted too, as long as it has no holes.
            if last not in CONV_INDICES:
                raise ValueError(f"VGG-19 features state_dict ends at index {last}, which is not a conv layer")
        model = cls(last_conv=last)
        model.load_state_dict(sd, strict=True)
        return model

    @classmethod
    def from_file(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "VGG19Features":
        state_dict = torch.load(Path(path), map_location=map_location, weights_only=True)
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"{path}: expected a state_dict, got {type(state_dict).__name__}")
        return cls.from_state_dict(state_dict)


def _features_only(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if any(key.startswith("features.") for key in state_dict):
        return {key[len("features."):]: value for key, value in state_dict.items() if key.startswith("features.")}
    return dict(state_dict)
