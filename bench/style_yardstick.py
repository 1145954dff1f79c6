"""The style-balance yardstick (issue 11): the PyTorch neural-style tutorial's losses on the shipped VGG, measured
on the returned image, independent of the engine's own layers and weights.

    ys = Yardstick(vgg)                      # models.vgg.VGG19Features (e.g. StyleEngine(...).vgg)
    score = ys.score(result_png, photo, painting, size=128)
    score.content_ratio <= 0.6 and score.style_ratio <= 0.2   # "photo kept" and "style arrived"

- content loss: MSE of conv2_2 features (the tutorial's conv_4);
- style loss: sum over conv1_1, conv1_2, conv2_1, conv2_2, conv3_1 (the tutorial's conv_1..conv_5) of the MSE of
  Gram matrices divided by C*H*W; inputs in the Caffe convention the weights need (BGR, 0..255, mean subtracted).
- The photo is resized as the engine resizes it (longest side `size`, LANCZOS), the painting likewise (longest side
  size * style_scale). The result is read back from 8-bit PNG bytes, as a client receives it.
- content_ratio = content loss of the result / content loss of the painting itself (resized to the photo's size)
  against the photo; style_ratio = style loss of the result / style loss of the photo itself against the painting.
"""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from app.style.engine import StyleEngine, gram, pil_to_tensor
from app.style.options import TUTORIAL_CONTENT_LAYERS, TUTORIAL_STYLE_LAYERS, fit_size
from models.vgg import VGG19Features, caffe_preprocess

MAX_CONTENT_RATIO = 0.6  # "photo kept"
MAX_STYLE_RATIO = 0.2  # "style arrived"


@dataclass
class Score:
    content: float  # the result's content loss
    style: float  # the result's style loss
    painting_content: float  # the painting's own content loss against the photo
    photo_style: float  # the photo's own style loss against the painting

    @property
    def content_ratio(self) -> float:
        return self.content / self.painting_content

    @property
    def style_ratio(self) -> float:
        return self.style / self.photo_style

    @property
    def photo_kept(self) -> bool:
        return self.content_ratio <= MAX_CONTENT_RATIO

    @property
    def style_arrived(self) -> bool:
        return self.style_ratio <= MAX_STYLE_RATIO

    @property
    def passed(self) -> bool:
        return self.photo_kept and self.style_arrived

    def as_dict(self) -> dict:
        return {**asdict(self), "content_ratio": self.content_ratio, "style_ratio": self.style_ratio,
                "passed": self.passed}


def as_png(image: Image.Image) -> Image.Image:
    """The image as a client receives it: encoded to PNG (8-bit RGB) and decoded again."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    buf.seek(0)
    return Image.open(buf).convert("RGB")


class Yardstick:
    def __init__(self, vgg: VGG19Features, device: str | torch.device = "cpu"):
        self.vgg = vgg
        self.device = torch.device(device)

    def _feats(self, rgb01: torch.Tensor, layers) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return self.vgg.extract(caffe_preprocess(rgb01.to(self.device)), layers)

    def content_loss(self, image01: torch.Tensor, photo01: torch.Tensor) -> float:
        a = self._feats(image01, TUTORIAL_CONTENT_LAYERS)
        b = self._feats(photo01, TUTORIAL_CONTENT_LAYERS)
        return float(sum(F.mse_loss(a[n], b[n]) for n in TUTORIAL_CONTENT_LAYERS))

    def style_loss(self, image01: torch.Tensor, painting01: torch.Tensor) -> float:
        a = self._feats(image01, TUTORIAL_STYLE_LAYERS)
        b = self._feats(painting01, TUTORIAL_STYLE_LAYERS)
        return float(sum(F.mse_loss(gram(a[n]), gram(b[n])) for n in TUTORIAL_STYLE_LAYERS))

    def score(self, result: Image.Image, photo: Image.Image, painting: Image.Image, size: int,
              style_scale: float = 1.0) -> Score:
        """Yardstick of one result (an engine output of longest side `size`) for its photo and painting."""
        out_size = fit_size(*photo.size, size)
        photo01 = pil_to_tensor(photo, out_size)
        painting01 = pil_to_tensor(painting, StyleEngine._style_size(painting, size, style_scale))
        painting_as_photo = pil_to_tensor(painting, out_size)  # the painting itself, in the photo's frame
        result01 = pil_to_tensor(as_png(result))
        if result01.shape != photo01.shape:
            raise ValueError(f"result is {result.size}, the photo at size {size} is {out_size}")
        return Score(content=self.content_loss(result01, photo01), style=self.style_loss(result01, painting01),
                     painting_content=self.content_loss(painting_as_photo, photo01),
                     photo_style=self.style_loss(photo01, painting01))
