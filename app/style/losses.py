"""The losses of a style run: the PyTorch tutorial's (content: mean squared feature difference; style: mean
squared difference of Gram matrices normalised by C*H*W; an optional total variation), made relative by Objective
so that `style_weight` is a dimensionless ratio (docs/style.md, "Balance")."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from models.vgg import VGG19Features


def gram(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, C) Gram matrices in float32, divided by C*H*W (the number of elements)."""
    n, c, h, w = features.shape
    f = features.reshape(n, c, h * w).float()
    with torch.autocast(device_type=f.device.type, enabled=False):
        return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


class _GramMSE(torch.autograd.Function):
    """mean((gram(f) - target)^2) for f of shape (N, C, H*W). Same value as F.mse_loss(gram(...), target); the
    backward pass is one matmul, 2 / (N*C*C) ((G - T) + (G - T)^T) f / (C*H*W), where autograd through bmm(f, f^T)
    does two. The products run in f's dtype (bfloat16 on a CPU with native bf16: float32 accumulation inside the
    matmul), G - T and the loss in float32."""

    @staticmethod
    def forward(ctx, f: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n, c, hw = f.shape
        diff = torch.bmm(f, f.transpose(1, 2)).to(target.dtype).div_(c * hw).sub_(target)
        ctx.save_for_backward(f, diff)
        return diff.pow(2).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        f, diff = ctx.saved_tensors
        n, c, hw = f.shape
        sym = (diff + diff.transpose(1, 2)).mul_(grad * (2.0 / (diff.numel() * c * hw)))  # symmetric targets: 2(G-T)
        return torch.bmm(sym.to(f.dtype), f), None


def gram_mse(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """F.mse_loss(gram(features), target) with a cheaper backward pass; the products in the features' dtype, the
    difference and the loss in float32."""
    n, c, h, w = features.shape
    with torch.autocast(device_type=features.device.type, enabled=False):
        return _GramMSE.apply(features.reshape(n, c, h * w), target.float())


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring pixels (on the Caffe 0..255 scale)."""
    return (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean()


class Objective:
    """The loss of one scale: content features, blended style Gram targets and the balance computed once.

    The balance is relative (docs/style.md, "Balance"). Each term is measured as a fraction of the distance between
    the photo and the painting, summed over its layers as the tutorial sums them:
    - content: sum of MSE(features, photo's) / sum of MSE(painting's features, photo's), the painting resized to the
      photo's frame (`styles_framed`): 0 at the photo, 1 as far from it as the painting itself;
    - style: sum of Gram MSE(image, painting) / sum of Gram MSE(photo, painting): 1 at the photo, 0 with the
      painting's statistics.
    Both are dimensionless, whatever the painting's contrast, the photo's brightness or the size, so `style_weight`
    is a ratio (how much one unit of style is worth against one unit of content), larger meaning more style. One
    normaliser per term, not one per layer: the layers keep the tutorial's relative weights (the deeper layers'
    larger Gram distances dominate), so the optimiser does not spend the photo on driving the first layers' colour
    statistics far below what the painting needs (measured in docs/style.md).
    A blend uses the blended Gram targets and the blend-weighted mean of the paintings' content distances. The
    normalisers are floored at 1e-3 of the targets' mean square (a painting equal to the photo)."""

    def __init__(self, vgg: VGG19Features, content: torch.Tensor, styles: Sequence[torch.Tensor],
                 blend: Sequence[float], content_layers: Sequence[str], style_layers: Sequence[str],
                 content_weight: float, style_weight: float, tv_weight: float,
                 styles_framed: Sequence[torch.Tensor] | None = None, relative: bool = True):
        self.vgg = vgg
        self.dtype = next(vgg.parameters()).dtype  # bfloat16 for a low-precision copy (StyleEngine.net)
        self.content_layers = list(content_layers) if content_weight > 0 else []
        self.style_layers = list(style_layers) if style_weight > 0 else []
        self.layers = list(dict.fromkeys(self.content_layers + self.style_layers))
        self.weights = (content_weight, style_weight, tv_weight)
        framed_list = list(styles_framed) if styles_framed is not None else [None] * len(styles)
        with torch.no_grad():
            feats = self._extract(content, self.layers)
            self.content_targets = {n: feats[n].detach().float() for n in self.content_layers}
            self.gram_targets: dict[str, torch.Tensor] = {}
            distances = {n: content.new_zeros((), dtype=torch.float32) for n in self.content_layers}
            for w, style, framed in zip(blend, styles, framed_list):
                if w == 0:
                    continue
                sfeats = self._extract(style, self.style_layers)
                for n in self.style_layers:
                    self.gram_targets[n] = self.gram_targets.get(n, 0) + gram(sfeats[n]) * w
                if self.content_layers:
                    ffeats = self._extract(framed if framed is not None else _fit(style, content),
                                         self.content_layers)
                    for n in self.content_layers:
                        distances[n] = distances[n] + w * F.mse_loss(ffeats[n].float(), self.content_targets[n])
            self.content_scale = 1.0 / _floored([distances[n] for n in self.content_layers],
                                                [self.content_targets[n] for n in self.content_layers])
            photo_distances = [F.mse_loss(gram(feats[n]), self.gram_targets[n]) for n in self.style_layers]
            self.style_scale = 1.0 / _floored(photo_distances, [self.gram_targets[n] for n in self.style_layers])
            # total variation relative to the photo's own: an image as rough as the photo scores 1
            self.tv_scale = 1.0 / max(float(tv_loss(content.float())), 1e-6) if tv_weight > 0 else 1.0
            if not relative:  # the tutorial's absolute losses (bench.style reproduces its objective with them)
                self.content_scale = self.style_scale = self.tv_scale = 1.0

    def _extract(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.vgg.extract(x.to(self.dtype), layers)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        content_weight, style_weight, tv_weight = self.weights
        feats = self._extract(x, self.layers)
        zero = x.new_zeros((), dtype=torch.float32)
        c_loss = sum((F.mse_loss(feats[n].float(), self.content_targets[n]) for n in self.content_layers),
                     zero) * self.content_scale
        s_loss = sum((gram_mse(feats[n], self.gram_targets[n]) for n in self.style_layers), zero) * self.style_scale
        t_loss = tv_loss(x.float()) * self.tv_scale if tv_weight > 0 else zero
        total = content_weight * c_loss + style_weight * s_loss + tv_weight * t_loss
        return total, {"content": c_loss, "style": s_loss, "tv": t_loss, "total": total}


def _floored(distances: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> float:
    """A term's normaliser: the sum of its layers' distances, kept at least 1e-3 of the sum of the targets' mean
    squares (and above 0). 1.0 for a term with no layers."""
    if not distances:
        return 1.0
    floor = 1e-3 * sum(float(t.float().pow(2).mean()) for t in targets)
    return max(sum(float(d) for d in distances), floor, 1e-12)


def _fit(image: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`image` resized (bilinear) to the spatial size of `like`."""
    if image.shape[-2:] == like.shape[-2:]:
        return image
    return F.interpolate(image, size=like.shape[-2:], mode="bilinear", align_corners=False)
