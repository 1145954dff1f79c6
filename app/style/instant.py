"""Instant style transfer: whitening and colouring (WCT, Li et al. 2017) of VGG-19 relu3_1 features, then a decoder
trained to invert relu3_1 (models/decoder.py, training/decoder.py). One encoder pass of the photo (plus one of the
painting when it is an upload: a preset's statistics are computed once and cached), a few 256x256 matrix products,
one decoder pass: about a second at 512 px on a CPU, against minutes for the Gatys optimisation (engine.py).

    styler = InstantStyler.load(weights_dir, vgg_path, device)
    image = styler.stylise(content_pil, [styler.preset_stats("udnie", 512)], [1.0], size=512, alpha=1.0)

The features are whitened with the photo's own covariance (its correlations removed, each direction scaled to unit
variance), then coloured with the painting's (its correlations and variances put in) and its mean added:

    f_cs = C_s W_c (f_c - m_c) + m_s,   W_c = E_c D_c^-1/2 E_c^T,   C_s = E_s D_s^1/2 E_s^T

A blend of paintings colours with the weighted sum of their C_s and m_s (the paper's linear interpolation of the
stylised features, done once on the matrices). `alpha` blends the stylised features with the photo's own
(alpha 0: the decoder's reconstruction of the photo). Statistics are computed in float64 on features scaled by
models.decoder.FEATURE_SCALE; eigenvalues under EIGEN_FLOOR are dropped (the paper's 1e-5).
Precision: on a CPU with native bfloat16 (AVX512-BF16/AMX, as oneDNN reports) the convolutions run under bfloat16
autocast in channels-last layout, 2.5x faster than float32 on this machine's encoder for the same held-out PSNR to
0.01 dB; the statistics and the transform stay float64/float32 (`precision="float32"` turns it off).
No web framework here (the route is app/style/api/instant.py).
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from models.checkpoints import sha256_of
from app.style import presets
from app.style.engine import pil_to_tensor, preserve_colors, tensor_to_pil
from app.style.options import fit_size, style_size
from models.decoder import FEATURE_SCALE, StyleDecoder, encode, pad_to_multiple
from models.vgg import VGG19Features

ASSET_NAME = "style-decoder"
EIGEN_FLOOR = 1e-5
PRESET_CACHE_SIZE = 64  # (preset, style size) statistics kept; each is a 256x256 matrix (256 KB)


class InstantUnavailable(RuntimeError):
    """No decoder to run (not trained, file missing, or trained on another VGG); the message says what to do."""


@dataclass(frozen=True)
class StyleStats:
    """A painting's relu3_1 statistics: the mean (C, 1) and the colouring matrix C_s = E D^1/2 E^T (C, C), float32,
    on the FEATURE_SCALE scale."""

    mean: torch.Tensor
    colour: torch.Tensor


def _moments(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, C, h, w) features -> mean (C, 1) and covariance (C, C), float64, on the FEATURE_SCALE scale."""
    f = features[0].reshape(features.shape[1], -1).double() * FEATURE_SCALE
    mean = f.mean(dim=1, keepdim=True)
    f = f - mean
    cov = f @ f.T / max(1, f.shape[1] - 1)
    return mean, cov


def _eig(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values, vectors = torch.linalg.eigh(cov)
    keep = values > EIGEN_FLOOR
    return values[keep], vectors[:, keep]


def style_stats(features: torch.Tensor) -> StyleStats:
    mean, cov = _moments(features)
    values, vectors = _eig(cov)
    colour = (vectors * values.sqrt()) @ vectors.T
    return StyleStats(mean.float(), colour.float())


def wct(content: torch.Tensor, styles: Sequence[StyleStats], weights: Sequence[float], alpha: float
        ) -> torch.Tensor:
    """content (1, C, h, w) relu3_1 features -> alpha x the whitened-and-coloured features + (1 - alpha) x content."""
    if alpha <= 0:
        return content
    _, c, h, w = content.shape
    mean_c, cov_c = _moments(content)
    values, vectors = _eig(cov_c)
    whiten = (vectors / values.sqrt()) @ vectors.T
    colour = sum(wt * s.colour.double() for wt, s in zip(weights, styles))
    mean_s = sum(wt * s.mean.double() for wt, s in zip(weights, styles))
    transform = (colour @ whiten).to(content.dtype)
    f = content[0].reshape(c, -1) * FEATURE_SCALE
    stylised = transform @ (f - mean_c.to(f.dtype)) + mean_s.to(f.dtype)
    stylised = (stylised / FEATURE_SCALE).reshape(1, c, h, w)
    return stylised if alpha >= 1 else alpha * stylised + (1 - alpha) * content


class InstantStyler:
    """The VGG encoder up to relu3_1 and the decoder, loaded once; thread-safe (inference only, a locked cache)."""

    def __init__(self, vgg: VGG19Features, decoder: StyleDecoder, device: torch.device, entry: dict | None = None,
                 precision: str = "auto", shared_vgg: bool = False):
        """shared_vgg: `vgg` belongs to someone else (a StyleEngine's, already on the device, eval, no gradients):
        used as it is, its memory layout untouched."""
        self.device = torch.device(device)
        if precision not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"precision must be auto, float32 or bfloat16, got {precision!r}")
        if precision == "auto":
            precision = "bfloat16" if self.device.type == "cpu" and _cpu_has_bf16() else "float32"
        self.precision = precision
        self.bf16 = precision == "bfloat16"
        self.memory_format = torch.channels_last if self.bf16 else torch.contiguous_format
        self.vgg = vgg if shared_vgg else vgg.eval().requires_grad_(False).to(self.device,
                                                                               memory_format=self.memory_format)
        self.decoder = decoder.eval().requires_grad_(False).to(self.device, memory_format=self.memory_format)
        self.entry = entry or {}
        self._cache: OrderedDict[tuple, StyleStats] = OrderedDict()
        self._lock = threading.Lock()

    # ----------------------------------------------------------------------------------------- loading

    @classmethod
    def load(cls, weights_dirs: Sequence[Path], vgg_paths: Sequence[Path], device: str | torch.device = "cpu",
             precision: str = "auto", shared_vgg: tuple[Path, VGG19Features] | None = None) -> "InstantStyler":
        """The decoder listed as "style-decoder" under "assets" in the first of weights_dirs' manifests that has
        one (sha256 checked), with the first of vgg_paths whose sha256 is the one it was trained on.
        shared_vgg: (its file, a VGG already loaded from it on `device`, e.g. a StyleEngine's): used instead of
        loading that file a second time when it is the one chosen."""
        entry, folder = _find_entry(weights_dirs)
        path = folder / entry["file"]
        if not path.is_file():
            raise InstantUnavailable(f"{path}: the style decoder listed in the manifest is missing; train it with "
                                     "python -m training.decoder or restore the file")
        if sha256_of(path) != str(entry.get("sha256", "")).lower():
            raise InstantUnavailable(f"{path}: sha256 mismatch with the manifest; re-train (python -m "
                                     "training.decoder) or restore the file")
        wanted = entry.get("encoder_sha256")
        vgg_path = next((p for p in dict.fromkeys(vgg_paths) if p.is_file() and (wanted is None
                                                                                  or sha256_of(p) == wanted)), None)
        if vgg_path is None:
            raise InstantUnavailable("the style decoder was trained on the VGG-19 file with sha256 "
                                     f"{str(wanted)[:12]}.. (weights/vgg19_features_0-16.pth) and none of "
                                     f"{', '.join(str(p) for p in vgg_paths)} is it")
        decoder = StyleDecoder.from_file(path, **entry.get("config", {}))
        if shared_vgg is not None and Path(shared_vgg[0]).resolve() == Path(vgg_path).resolve():
            return cls(shared_vgg[1], decoder, torch.device(device), entry, precision, shared_vgg=True)
        vgg = VGG19Features.from_file(vgg_path)
        return cls(vgg, decoder, torch.device(device), entry, precision)

    # ----------------------------------------------------------------------------------------- statistics

    def _prepare(self, image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
        padded, _ = pad_to_multiple(pil_to_tensor(image, size).to(self.device))
        return padded.contiguous(memory_format=self.memory_format)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _encode(self, padded: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return encode(self.vgg, padded.contiguous(memory_format=self.memory_format)).float()

    def _decode(self, features: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.decoder(features.contiguous(memory_format=self.memory_format)).float()

    @torch.inference_mode()
    def image_stats(self, image: Image.Image, size: tuple[int, int]) -> StyleStats:
        """A painting's statistics, the painting resized to size=(w, h) (reflection-padded to a multiple of 4)."""
        padded = self._prepare(image, size)
        h, w = size[1], size[0]
        features = self._encode(padded)[..., : max(1, h // 4), : max(1, w // 4)]
        return style_stats(features)

    def preset_stats(self, name: str, longest: int, style_scale: float = 1.0) -> StyleStats:
        """A preset's statistics at the size a job of `longest` px gives it; computed once per size, then cached."""
        path = presets.preset_path(name)  # KeyError for an unknown name
        with Image.open(path) as img:
            native = img.size
        size = style_size(native, longest, style_scale)
        key = (name, size)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        with Image.open(path) as img:
            stats = self.image_stats(img.convert("RGB"), size)
        with self._lock:
            self._cache[key] = stats
            while len(self._cache) > PRESET_CACHE_SIZE:
                self._cache.popitem(last=False)
        return stats

    def upload_stats(self, image: Image.Image, longest: int, style_scale: float = 1.0) -> StyleStats:
        return self.image_stats(image, style_size(image.size, longest, style_scale))

    def cached_presets(self) -> list[tuple[str, tuple[int, int]]]:
        with self._lock:
            return list(self._cache)

    # ----------------------------------------------------------------------------------------- stylise

    @torch.inference_mode()
    def reconstruct(self, content: Image.Image, size: int) -> Image.Image:
        """The decoder's reconstruction of the photo at `size` (what alpha 0 returns)."""
        return self.stylise(content, [], [], size, alpha=0.0)

    @torch.inference_mode()
    def stylise(self, content: Image.Image, styles: Sequence[StyleStats], weights: Sequence[float], size: int,
                alpha: float = 1.0, preserve_color: bool = False) -> Image.Image:
        """The photo resized so its longest side is `size`, stylised; an RGB PIL image of that size."""
        w, h = fit_size(*content.size, size)
        photo = pil_to_tensor(content, (w, h)).to(self.device)
        return tensor_to_pil(self.stylise_tensor(photo, styles, weights, alpha, preserve_color))

    @torch.inference_mode()
    def stylise_tensor(self, photo: torch.Tensor, styles: Sequence[StyleStats], weights: Sequence[float],
                       alpha: float = 1.0, preserve_color: bool = False) -> torch.Tensor:
        """A photo as (1, 3, h, w) RGB [0, 1] (any h, w), stylised: (1, 3, h, w) RGB [0, 1] float32 on the device
        (what a job with init=instant starts from, app/style/engine.py)."""
        photo = photo.to(self.device, torch.float32)
        h, w = photo.shape[-2:]
        padded, _ = pad_to_multiple(photo)
        features = self._encode(padded)
        if styles and alpha > 0:
            features = wct(features, styles, weights, alpha)
        out = self._decode(features)[..., :h, :w].clamp(0, 1).contiguous()
        if preserve_color:
            out = preserve_colors(out, photo)
        return out


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def decoder_problem(weights_dirs: Sequence[Path]) -> str | None:
    """Why no decoder can be loaded from weights_dirs (no manifest entry, the file missing), or None; cheap (no
    hashing): the API's check of a job asking for init=instant. The worker's load verifies the rest."""
    try:
        entry, folder = _find_entry(weights_dirs)
    except InstantUnavailable as exc:
        return str(exc)
    path = folder / entry["file"]
    if not path.is_file():
        return f"{path}: the style decoder listed in the manifest is missing; train it with python -m training.decoder"
    return None


def _find_entry(weights_dirs: Sequence[Path]) -> tuple[dict, Path]:
    looked = []
    for folder in dict.fromkeys(Path(d) for d in weights_dirs):
        manifest = folder / "manifest.json"
        looked.append(str(manifest))
        try:
            entry = (json.loads(manifest.read_text(encoding="utf-8")).get("assets") or {}).get(ASSET_NAME)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(entry, dict) and isinstance(entry.get("file"), str):
            return entry, folder
    raise InstantUnavailable(f"no {ASSET_NAME!r} under \"assets\" in {' or '.join(looked)}; train it with "
                             "python -m training.decoder")
