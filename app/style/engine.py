"""Gatys et al. neural style transfer by optimisation of the image (pure PyTorch, no web framework).

    engine = StyleEngine("weights/vgg19_features_0-16.pth", device="cpu")
    image = engine.run(content_pil, [style_pil], StyleParams(size=256), on_progress=cb, should_stop=stop)

The image is optimised with L-BFGS against a VGG-19 (Caffe weights, see models/vgg.py) on a coarse-to-fine
schedule: most L-BFGS evaluations at half resolution, where they cost a quarter, then a refinement at full size.
Losses are the PyTorch tutorial's ("Neural Transfer Using PyTorch"): content = mean squared feature difference,
style = mean squared difference of Gram matrices normalised by C*H*W, plus an optional total-variation term; each
is made relative (see Objective): content as a fraction of the painting's own distance to the photo, style as a
fraction of the photo's own distance to the painting, so `style_weight` is a dimensionless ratio.

`steps` counts loss evaluations (L-BFGS closure calls) over all scales, as the tutorial counts its steps.
`should_stop()` is polled at every evaluation and raises StyleCancelled; `on_progress(ProgressInfo)` is called at
every evaluation with the losses and a lazy preview.
"""
from __future__ import annotations

import copy
import functools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from preprocessing.decoding import to_rgb
from app.style.options import (
    COARSE_CONTENT_BOOST, DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, DETAIL, GATYS_CONTENT_LAYERS,
    GATYS_STYLE_LAYERS, StyleInputError, StyleParams, fit_size, schedule, style_size, too_thin,
)
from app.style.losses import Objective
from models.vgg import VGG19Features, caffe_preprocess


# The first evaluations of each stage run in float32 when the objective is bfloat16: L-BFGS's first steps are short
# and its line search compares losses that differ by less than bfloat16 rounding, so on a flat stretch (a smooth
# photo) it could stall at the start; with a float32 history behind it, bfloat16 then carries on (docs/style.md).
FLOAT32_WARMUP_EVALS = 5


class StyleCancelled(Exception):
    """should_stop() returned True: the run was abandoned between two loss evaluations."""


class StyleDiverged(StyleInputError):
    """The loss stopped being a finite number: the weights are too large for float32."""


class InstantInitUnavailable(StyleInputError):
    """init=instant and no style decoder to compute the start with (app/style/instant.py says why)."""


@dataclass
class ProgressInfo:
    """One loss evaluation. `preview()` renders the current image (at the current scale) only when called."""

    step: int
    total: int
    losses: dict[str, float]
    stage: int = 0
    stages: int = 1
    scale_px: int = 0
    _image: torch.Tensor | None = field(default=None, repr=False)

    def preview(self) -> Image.Image:
        """The image being optimised, as RGB PIL (call it inside the callback: the tensor keeps changing)."""
        if self._image is None:
            raise RuntimeError("no image available")
        with torch.no_grad():
            return tensor_to_pil(self._image.detach())


# --------------------------------------------------------------------------------------------- image helpers

def pil_to_tensor(img: Image.Image, size: tuple[int, int] | None = None) -> torch.Tensor:
    """PIL image (any mode) -> (1, 3, H, W) float32 RGB in [0, 1], optionally resized to size=(w, h)."""
    img = to_rgb(img)
    if size is not None and img.size != size:
        img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_pil(rgb01: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) or (3, H, W) RGB in [0, 1] (clamped) -> PIL RGB."""
    t = rgb01.detach().float().clamp(0, 1)
    if t.dim() == 4:
        t = t[0]
    arr = (t.permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


# ITU-R BT.601 full-range YCbCr (JPEG), on [0, 1] RGB.
_RGB_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114],
                              [-0.168736, -0.331264, 0.5],
                              [0.5, -0.418688, -0.081312]])


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB [0, 1] -> YCbCr with Y in [0, 1], Cb/Cr centred on 0."""
    m = _RGB_TO_YCBCR.to(rgb)
    return torch.einsum("ij,njhw->nihw", m, rgb)


def ycbcr_to_rgb(ycc: torch.Tensor) -> torch.Tensor:
    m = torch.linalg.inv(_RGB_TO_YCBCR.double()).to(ycc)
    return torch.einsum("ij,njhw->nihw", m, ycc)


def preserve_colors(result: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Luminance of `result`, chroma (Cb, Cr) of `content` (same size), RGB [0, 1] in and out."""
    y = rgb_to_ycbcr(result.clamp(0, 1))[:, :1]
    cbcr = rgb_to_ycbcr(content)[:, 1:]
    return ycbcr_to_rgb(torch.cat([y, cbcr], dim=1)).clamp(0, 1)


# --------------------------------------------------------------------------------------------- engine

class StyleEngine:
    """Loads VGG-19 once; `run()` may be called many times (one at a time per engine: the model is shared)."""

    def __init__(self, weights_path: str | Path, device: str | torch.device = "cpu", full_vgg: bool | None = None,
                 precision: str = "auto", decoder_dirs: Sequence[str | Path] | None = None):
        """precision: the dtype the loss evaluations run VGG in: "float32", "bfloat16", or "auto" (bfloat16 on a CPU
        with native bf16 arithmetic, AVX512-BF16 or AMX, where it halves an evaluation's time; float32 elsewhere).
        `self.vgg` stays float32 whatever it is (targets of the yardstick and benchmarks use it).
        decoder_dirs: the folders whose manifest.json may list the style decoder that init="instant" needs (loaded
        on the first such job; default: the folder of weights_path)."""
        self.device = torch.device(device)
        self.weights_path = Path(weights_path)
        self.decoder_dirs = [Path(d) for d in (decoder_dirs or ()) if d] + [self.weights_path.parent]
        self._instant = None  # app.style.instant.InstantStyler, loaded on the first init="instant" run
        vgg = VGG19Features.from_file(self.weights_path, map_location="cpu")
        if full_vgg is not None and full_vgg != vgg.is_full:
            have = "conv1_1..conv5_4" if vgg.is_full else f"conv1_1..{vgg.layer_names[-2]}"
            raise ValueError(f"{self.weights_path}: full_vgg={full_vgg} but the file holds {have}")
        self.full_vgg = vgg.is_full
        vgg.eval().requires_grad_(False)
        self.channels_last = self.device.type == "cuda"
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            vgg = vgg.to(memory_format=torch.channels_last)
        self.vgg = vgg.to(self.device)
        self.precision = resolve_precision(precision, self.device)
        # the network the objective evaluates: VGG itself, or a bfloat16 copy of it
        self.net = self.vgg if self.precision == "float32" else copy.deepcopy(self.vgg).to(torch.bfloat16)
        self.content_layers = GATYS_CONTENT_LAYERS if self.full_vgg else DEFAULT_CONTENT_LAYERS
        self.style_layers = GATYS_STYLE_LAYERS if self.full_vgg else DEFAULT_STYLE_LAYERS

    def _prepare(self, rgb01: torch.Tensor) -> torch.Tensor:
        """RGB [0, 1] -> the network's input (Caffe convention), on the engine's device and memory format."""
        x = caffe_preprocess(rgb01.to(self.device))
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def run(self, content: Image.Image, styles: Sequence[Image.Image], params: StyleParams | None = None,
            on_progress: Callable[[ProgressInfo], None] | None = None,
            should_stop: Callable[[], bool] | None = None, relative: bool = True,
            coarse_to_fine: bool = True) -> Image.Image:
        """Stylise `content` with `styles` (blended by params.style_weights); returns an RGB image whose longest
        side is params.size. Raises StyleCancelled when should_stop() turns True, ValueError on bad inputs.
        relative=False uses the tutorial's absolute losses (weights then depend on the inputs; for benchmarks);
        coarse_to_fine=False runs every evaluation at full size (for benchmarks: jobs always use `schedule`)."""
        params = params or StyleParams()
        styles = list(styles)
        blend = params.blend(len(styles))
        content_layers = params.content_layers or list(self.content_layers)
        style_layers = params.style_layers or list(self.style_layers)
        for name in content_layers + style_layers:
            if not self.vgg.has_layer(name):
                raise StyleInputError(f"layer {name!r} needs a full VGG-19 file; these weights have "
                                 f"{self.vgg.layer_names[0]}..{self.vgg.layer_names[-1]}")
        size = params.output_size(self.device)
        problem = too_thin("content", content.size, size, params.steps) or next(
            filter(None, (too_thin("style", s.size, size, params.steps, params.style_scale) for s in styles)), None)
        if problem:
            raise StyleInputError(problem)
        out_w, out_h = fit_size(*content.size, size)
        stages = schedule(size, params.steps) if coarse_to_fine else [(size, params.steps)]
        total = sum(n for _, n in stages)
        seed = params.seed if params.seed is not None else random.randrange(2**63)
        generator = torch.Generator().manual_seed(seed)

        x: torch.Tensor | None = None
        done = 0
        content_full = pil_to_tensor(content, (out_w, out_h))
        for stage_index, (longest, n_evals) in enumerate(stages):
            w, h = fit_size(out_w, out_h, longest)
            content_t = self._prepare(content_full if (w, h) == (out_w, out_h) else pil_to_tensor(content, (w, h)))
            style_ts = [self._prepare(pil_to_tensor(s, self._style_size(s, longest, params.style_scale)))
                        for s in styles]
            boost = 1.0 if longest == size else COARSE_CONTENT_BOOST
            # each painting in the photo's frame: the content term's unit is the painting's own content distance
            framed = [self._prepare(pil_to_tensor(s, (w, h))) for s in styles]
            objective_on = functools.partial(Objective, content=content_t, styles=style_ts, blend=blend,
                                             content_layers=content_layers, style_layers=style_layers,
                                             content_weight=params.content_weight * boost,
                                             style_weight=params.style_weight, tv_weight=params.tv_weight,
                                             styles_framed=framed, relative=relative)
            objective = objective_on(self.net)
            precise = None if self.net is self.vgg else functools.partial(objective_on, self.vgg)
            if x is None:
                content01 = content_full if (w, h) == (out_w, out_h) else pil_to_tensor(content, (w, h))
                if params.init == "instant":
                    x = self.instant_start(content01, styles, blend, longest, params.style_scale)
                else:
                    x = self._initial(params.init, content01, generator)
            else:
                # Upsample the coarse result and put back the content's fine detail that the coarse scale could
                # not hold (a Laplacian-pyramid step): the refinement then starts near the content at full size.
                content01 = content_full.to(self.device) if (w, h) == (out_w, out_h) \
                    else pil_to_tensor(content, (w, h)).to(self.device)
                prev_h, prev_w = x.shape[-2:]
                blurred = F.interpolate(F.interpolate(content01, size=(prev_h, prev_w), mode="area"),
                                        size=(h, w), mode="bicubic", align_corners=False)
                x = F.interpolate(x.detach(), size=(h, w), mode="bicubic", align_corners=False)
                x = (x + DETAIL * (content01 - blurred)).clamp_(0, 1)
            x = x.detach().requires_grad_(True)
            done = self._optimise(x, objective, n_evals, done, total, stage_index, len(stages), longest,
                                  on_progress, should_stop, precise)
        assert x is not None
        with torch.no_grad():
            result = x.detach().float().clamp(0, 1)
            if params.preserve_color:
                result = preserve_colors(result, content_full.to(result.device))
        return tensor_to_pil(result)

    @staticmethod
    def _style_size(style: Image.Image, longest: int, style_scale: float) -> tuple[int, int]:
        return style_size(style.size, longest, style_scale)

    def instant_styler(self):
        """The instant styler (app/style/instant.py) on this engine's own VGG when its file is the one the decoder
        was trained on (else the shipped file beside the decoder is loaded); loaded once, on first use.
        Raises InstantInitUnavailable with the reason when there is no usable decoder."""
        if self._instant is None:
            from app.style.instant import InstantStyler, InstantUnavailable

            vgg_paths = [self.weights_path] + [d / "vgg19_features_0-16.pth" for d in self.decoder_dirs]
            try:
                self._instant = InstantStyler.load(self.decoder_dirs, vgg_paths, self.device, self.precision,
                                                   shared_vgg=(self.weights_path, self.vgg))
            except InstantUnavailable as exc:
                raise InstantInitUnavailable(f"init=instant needs the style decoder: {exc}") from None
        return self._instant

    def instant_start(self, content01: torch.Tensor, styles: Sequence[Image.Image], blend: Sequence[float],
                      longest: int, style_scale: float) -> torch.Tensor:
        """init="instant": the instant stylisation (WCT + decoder) of content01 (RGB [0, 1], the first stage's
        size) with the styles sized for that stage (longest side `longest` x style_scale) and the job's blend
        weights, in full colour (preserve_color is applied to the job's result, as for any init)."""
        styler = self.instant_styler()
        stats = [styler.upload_stats(s, longest, style_scale) for s, w in zip(styles, blend) if w > 0]
        weights = [w for w in blend if w > 0]
        return styler.stylise_tensor(content01, stats, weights).clone().to(self.device)

    def _initial(self, init: str, content01: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if init == "content":
            return content01.clone().to(self.device)
        noise = torch.rand(content01.shape, generator=generator, dtype=torch.float32)  # CPU generator: portable
        return noise.to(self.device)

    def _optimise(self, x: torch.Tensor, objective: Objective, n_evals: int, done: int, total: int,
                  stage: int, stages: int, longest: int, on_progress, should_stop,
                  precise: Callable[[], Objective] | None = None) -> int:
        """Exactly n_evals loss evaluations of L-BFGS on x (in place); x ends as the best image evaluated.
        precise: builds the same objective in float32 for the first FLOAT32_WARMUP_EVALS (None: it is float32)."""
        count = 0
        best: tuple[float, torch.Tensor | None] = (math.inf, None)
        warmup = precise() if precise is not None and n_evals > FLOAT32_WARMUP_EVALS else objective

        def closure() -> torch.Tensor:
            nonlocal count, best
            if count >= n_evals:  # a line search asking for more than the budget
                raise _BudgetSpent
            if should_stop is not None and should_stop():
                raise StyleCancelled("style transfer cancelled")
            with torch.no_grad():  # keep the image a valid picture, as the tutorial does
                x.clamp_(0, 1)
            x.grad = None
            loss, parts = (warmup if count < FLOAT32_WARMUP_EVALS else objective)(self._prepare(x))
            loss.backward()
            count += 1
            value = float(loss.detach())
            if not math.isfinite(value):
                raise StyleDiverged(diverged_message(parts, objective.weights))
            if value < best[0]:
                best = (value, x.detach().clone())
            if on_progress is not None:
                losses = {k: float(v.detach()) for k, v in parts.items()}
                on_progress(ProgressInfo(step=min(done + count, total), total=total, losses=losses, stage=stage,
                                         stages=stages, scale_px=longest, _image=x))
            return loss

        # L-BFGS may stop early (no descent direction left after a clamp, or a line search that cannot move): it
        # is then restarted from the best image with a fresh history, until the budget is spent.
        while count < n_evals:
            before = count
            if best[1] is not None:
                with torch.no_grad():
                    x.copy_(best[1])
            optimizer = torch.optim.LBFGS([x], lr=1.0, max_iter=n_evals - count, max_eval=n_evals - count,
                                          history_size=100, tolerance_grad=0.0, tolerance_change=0.0,
                                          line_search_fn="strong_wolfe")
            try:
                optimizer.step(closure)
            except _BudgetSpent:
                break
            if count == before:
                break
        if best[1] is not None:
            with torch.no_grad():
                x.copy_(best[1])
        return done + count


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matmuls and convolutions run natively (not emulated) on this device: on a CPU, AVX512-BF16
    or AMX (oneDNN then does them in about half the float32 time); never assumed on CUDA."""
    if device.type != "cpu":
        return False
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return torch.backends.mkldnn.is_available() and any(check is not None and check() for check in checks)


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bfloat16" where native_bf16(device), else "float32"; the others are returned as they are."""
    if precision == "auto":
        return "bfloat16" if native_bf16(device) else "float32"
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"precision must be auto, float32 or bfloat16, got {precision!r}")
    return precision


def diverged_message(parts: dict[str, torch.Tensor], weights: tuple[float, float, float]) -> str:
    """Which option to lower when the loss stopped being finite: the weighted term that is not finite, or the
    largest one (the sum of finite terms can overflow too)."""
    weighted = {"content_weight": weights[0] * float(parts["content"].detach()),
                "style_weight": weights[1] * float(parts["style"].detach()),
                "tv_weight": weights[2] * float(parts["tv"].detach())}
    bad = [name for name, value in weighted.items() if not math.isfinite(value)]
    named = " and ".join(bad) if bad else max(weighted, key=lambda name: abs(weighted[name]))
    return (f"the optimisation diverged (its loss stopped being a finite number); lower {named} and submit the "
            "job again")


class _BudgetSpent(Exception):
    """Raised inside the L-BFGS closure when a stage's evaluations are spent."""


