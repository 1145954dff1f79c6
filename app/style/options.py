"""What a style-transfer job may ask, and the sizes it implies: the options model (StyleParams) with its defaults and
bounds, the coarse-to-fine schedule, and the checks of an image's shape. No tensors here: the API validates jobs
without loading the engine (app/style/engine.py runs them)."""
from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.vgg import LAYER_INDEX

# Layer sets. DEFAULT_* fit the partial weights (conv1_1..conv3_4); GATYS_* need a full VGG-19 file.
# The choice of the default is explained in docs/style.md (docs/style-layers.png compares the candidates).
TUTORIAL_CONTENT_LAYERS = ("conv2_2",)
TUTORIAL_STYLE_LAYERS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1")
DEFAULT_CONTENT_LAYERS = TUTORIAL_CONTENT_LAYERS
DEFAULT_STYLE_LAYERS = TUTORIAL_STYLE_LAYERS
GATYS_CONTENT_LAYERS = ("conv4_2",)
GATYS_STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")

DEFAULT_SIZE_CPU = 256
DEFAULT_SIZE_CUDA = 512
DEFAULT_STEPS = 250
DEFAULT_STYLE_WEIGHT = 1.5  # a ratio of relative losses (Objective; chosen by bench/style_grid.py, docs/style.md)
DEFAULT_CONTENT_WEIGHT = 1.0
DEFAULT_TV_WEIGHT = 0.0
DEFAULT_INIT = "content"  # measured against "instant" by python -m bench.style --evals-to-yardstick (docs/instant-style.md)
MAX_WEIGHT = 1e4  # style and content weights are ratios: beyond this one term is all there is
MIN_SIZE, MAX_SIZE = 64, 1024
MAX_STEPS = 2000
MAX_STYLES = 4
COARSE_MIN_SIZE = 64  # a coarse stage is only used when half the size is at least this
COARSE_STEP_FRACTION = 0.64  # share of the evaluations spent at half resolution (a fifth of the cost each)
COARSE_CONTENT_BOOST = 8.0  # content weight multiplier at the coarse scale (the coarse pass sets the layout;
# too much style there costs content at full size that the refinement cannot win back)
DETAIL = 1.0  # share of the content's fine detail restored when moving to a finer scale
MAX_STYLE_PIXELS = 1024 * 1024 * 4  # style_scale cannot make a style image larger than this
MAX_TV_WEIGHT = 1e4  # like the other weights: a ratio, and far below what float32 losses can hold
MAX_BLEND_WEIGHT = 1e6  # blend weights are normalised; bounded so their sum stays finite
MIN_SIDE = 4  # px: the shortest side VGG's two poolings (conv1_1..conv3_4) can take, at every scale


class StyleInputError(ValueError):
    """Inputs or options the engine cannot run with; the message is written for the user."""


class StyleParams(BaseModel):
    """What a style-transfer job may set. Validation errors name the field and the allowed range."""

    model_config = ConfigDict(extra="forbid")

    size: int | None = Field(None, ge=MIN_SIZE, le=MAX_SIZE, description=f"longest side of the output in px "
                             f"({MIN_SIZE}..{MAX_SIZE}); default {DEFAULT_SIZE_CUDA} on CUDA, {DEFAULT_SIZE_CPU} on CPU")
    steps: int = Field(DEFAULT_STEPS, ge=1, le=MAX_STEPS, description="loss evaluations (L-BFGS closure calls) "
                       "over all scales")
    style_weight: float = Field(DEFAULT_STYLE_WEIGHT, ge=0, le=MAX_WEIGHT, allow_inf_nan=False,
                                description="how much style against content, a ratio of relative losses (0.."
                                f"{MAX_WEIGHT:g}; default {DEFAULT_STYLE_WEIGHT:g}): larger gives more of "
                                "the painting, smaller keeps more of the photo")
    content_weight: float = Field(DEFAULT_CONTENT_WEIGHT, ge=0, le=MAX_WEIGHT, allow_inf_nan=False,
                                  description="weight of the content loss (relative, like style_weight)")
    tv_weight: float = Field(DEFAULT_TV_WEIGHT, ge=0, le=MAX_TV_WEIGHT, allow_inf_nan=False,
                             description="weight of the total-variation (smoothness) loss, relative to the "
                             f"photo's own roughness (0..{MAX_TV_WEIGHT:g})")
    init: Literal["content", "noise", "instant"] = Field(
        DEFAULT_INIT, description="where the optimisation starts: the content photo, noise, or the instant "
        "stylisation (POST /v1/style/instant's result for the same photo, styles and size; needs the style decoder)")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="seed of the noise init; same seed, inputs and "
                             "device give the same image")
    preserve_color: bool = Field(False, description="keep the content's colours (transfer style to luminance only)")
    style_scale: float = Field(1.0, ge=0.25, le=4.0, allow_inf_nan=False, description="size of the style image "
                               "relative to the output (longest sides)")
    style_weights: list[float] | None = Field(None, min_length=1, max_length=MAX_STYLES, description="blend weight "
                                              "of each style image (normalised to sum 1; each 0.."
                                              f"{MAX_BLEND_WEIGHT:g}); default equal weights")
    content_layers: list[str] | None = Field(None, min_length=1, max_length=8,
                                             description="VGG layers for the content loss (advanced)")
    style_layers: list[str] | None = Field(None, min_length=1, max_length=16,
                                           description="VGG layers for the style loss (advanced)")

    @field_validator("style_weights")
    @classmethod
    def _check_blend(cls, value: list[float] | None) -> list[float] | None:
        if value is None:
            return value
        if any(not math.isfinite(w) or not 0 <= w <= MAX_BLEND_WEIGHT for w in value):
            raise ValueError(f"style_weights must each be between 0 and {MAX_BLEND_WEIGHT:g}")
        if sum(value) <= 0:
            raise ValueError("style_weights must not all be 0")
        return value

    @field_validator("content_layers", "style_layers")
    @classmethod
    def _check_layers(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        unknown = [name for name in value if name not in LAYER_INDEX or name.startswith("pool")]
        if unknown:
            raise ValueError(f"unknown VGG-19 layer(s) {unknown}; use conv1_1..conv5_4 or relu1_1..relu5_4")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _check_weights(self) -> "StyleParams":
        if self.style_weight == 0 and self.content_weight == 0 and self.tv_weight == 0:
            raise ValueError("style_weight, content_weight and tv_weight cannot all be 0")
        return self

    def blend(self, n_styles: int) -> list[float]:
        """The normalised blend weights for n_styles style images; ValueError when they do not match."""
        if not 1 <= n_styles <= MAX_STYLES:
            raise StyleInputError(f"between 1 and {MAX_STYLES} style images are needed, got {n_styles}")
        weights = self.style_weights or [1.0] * n_styles
        if len(weights) != n_styles:
            raise StyleInputError(f"style_weights has {len(weights)} value(s) but {n_styles} style image(s) were "
                                  "given")
        total = float(sum(weights))
        return [w / total for w in weights]

    def output_size(self, device) -> int:
        if self.size is not None:
            return self.size
        return DEFAULT_SIZE_CUDA if str(device).startswith("cuda") else DEFAULT_SIZE_CPU


def fit_size(width: int, height: int, longest: int) -> tuple[int, int]:
    """(w, h) with max(w, h) == longest and the aspect ratio kept (each side at least 1)."""
    if width >= height:
        return longest, max(1, round(height * longest / width))
    return max(1, round(width * longest / height)), longest


def schedule(size: int, steps: int) -> list[tuple[int, int]]:
    """[(longest side, evaluations)] of the coarse-to-fine stages for an output of `size` px and `steps` in all."""
    coarse = size // 2
    if coarse < COARSE_MIN_SIZE or steps < 4:
        return [(size, steps)]
    coarse_steps = max(1, round(steps * COARSE_STEP_FRACTION))
    return [(coarse, coarse_steps), (size, steps - coarse_steps)]


def style_size(image_size: tuple[int, int], longest: int, style_scale: float) -> tuple[int, int]:
    """A style image's size at the scale whose longest side is `longest`, style_scale applied (MAX_STYLE_PIXELS
    caps it)."""
    target = max(16, round(longest * style_scale))
    w, h = fit_size(*image_size, target)
    if min(w, h) < MIN_SIDE:  # a panorama at a small scale: enlarged until its short side is usable
        target = math.ceil(MIN_SIDE * max(image_size) / max(1, min(image_size)))
        w, h = fit_size(*image_size, target)
    if w * h > MAX_STYLE_PIXELS:
        w, h = fit_size(*image_size, int(target * math.sqrt(MAX_STYLE_PIXELS / (w * h))))
    return w, h


def too_thin(what: str, image_size: tuple[int, int], size: int, steps: int, style_scale: float | None = None
             ) -> str | None:
    """Why an image of image_size (w, h) is too elongated for a job of `size` px and `steps`, or None. A style
    image (style_scale given) is sized like the engine sizes it at each scale."""
    shortest = None
    for longest, _ in schedule(size, steps):
        if style_scale is None:
            w, h = fit_size(*image_size, longest)
        else:
            w, h = style_size(image_size, longest, style_scale)
        shortest = min(w, h) if shortest is None else min(shortest, w, h)
    if shortest >= MIN_SIDE:
        return None
    width, height = image_size
    coarsest = schedule(size, steps)[0][0]
    most = coarsest * (style_scale or 1.0) / MIN_SIDE
    return (f"the {what} image is {width}x{height} px: at size {size} its short side would be {shortest} px, and "
            f"style transfer needs at least {MIN_SIDE} px (at most about {most:.0f}:1 at this size); crop it to a "
            "less elongated shape" + ("" if size >= MAX_SIZE else " or ask for a larger size"))
