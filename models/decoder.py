"""A decoder that inverts VGG-19's relu3_1 features (models/vgg.py, Caffe weights) back to an RGB image.

Used for instant style transfer by whitening and colouring (WCT, Li et al. 2017): the photo's relu3_1 features are
whitened, coloured with a painting's statistics, then decoded by this network. It is trained only to reconstruct
images from their own features (training/decoder.py), so it needs no style data.

Layout: the mirror of VGG-19 from relu3_1 back to the input, nearest-neighbour upsampling and reflection-padded 3x3
convolutions (no checkerboard artefacts from transposed convolutions, no dark borders from zero padding):

    relu3_1 (256, H/4, W/4) / 256 -> conv 256->2w, ReLU -> up x2 -> conv 2w->2w, ReLU -> conv 2w->w, ReLU
                            -> up x2 -> conv w->w, ReLU -> conv w->3  -> RGB in [0, 1] (not clamped)

`width` w = 64 is the full mirror of VGG (555,075 parameters, the WCT paper's decoder), 32 is half as wide
(213,027 parameters, a quarter of the arithmetic at full resolution).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

FEATURE_LAYER = "relu3_1"
FEATURE_CHANNELS = 256
DOWNSCALE = 4  # relu3_1 is two poolings deep
FEATURE_SCALE = 1 / 256  # Caffe-scale relu3_1 activations (RMS about 200-350 on photos) brought near 1


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c_in, c_out, kernel_size=3))


class StyleDecoder(nn.Module):
    """relu3_1 features (N, 256, h, w) -> RGB (N, 3, 4h, 4w) in [0, 1] (unclamped; clamp before display)."""

    def __init__(self, width: int = 64):
        super().__init__()
        if width < 4:
            raise ValueError(f"width must be at least 4, got {width}")
        self.width = width
        w2 = 2 * width
        self.block3 = _conv(FEATURE_CHANNELS, w2)
        self.block2 = nn.ModuleList([_conv(w2, w2), _conv(w2, width)])
        self.block1 = nn.ModuleList([_conv(width, width), _conv(width, 3)])
        with torch.no_grad():  # start near a mid-grey image, not far outside [0, 1]
            self.block1[1][1].weight.mul_(0.1)
            self.block1[1][1].bias.fill_(0.45)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.block3(features * FEATURE_SCALE))
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        for conv in self.block2:
            x = F.relu(conv(x))
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = F.relu(self.block1[0](x))
        return self.block1[1](x)

    @classmethod
    def from_file(cls, path, width: int, map_location: str | torch.device = "cpu") -> "StyleDecoder":
        model = cls(width=width)
        model.load_state_dict(torch.load(path, map_location=map_location, weights_only=True), strict=True)
        return model


def pad_to_multiple(x: torch.Tensor, multiple: int = DOWNSCALE) -> tuple[torch.Tensor, tuple[int, int]]:
    """x reflection-padded on the right and bottom to sides divisible by `multiple`; returns it and (h, w)."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h or pad_w:
        mode = "reflect" if pad_h < h and pad_w < w else "replicate"
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    return x, (h, w)


def encode(vgg, rgb01: torch.Tensor) -> torch.Tensor:
    """RGB [0, 1] (N, 3, H, W) with H, W divisible by 4 -> relu3_1 features of the Caffe VGG (models/vgg.py)."""
    from models.vgg import caffe_preprocess
    return vgg.extract(caffe_preprocess(rgb01), (FEATURE_LAYER,))[FEATURE_LAYER]


def reconstruct(vgg, decoder: StyleDecoder, rgb01: torch.Tensor) -> torch.Tensor:
    """decoder(encode(x)) for an image of any size (padded to a multiple of 4, cropped back), RGB [0, 1] clamped."""
    padded, (h, w) = pad_to_multiple(rgb01)
    return decoder(encode(vgg, padded))[..., :h, :w].clamp(0, 1)
