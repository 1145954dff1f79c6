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

As a script it is the speed yardstick of issue 13: the default job against the PyTorch tutorial's 300 L-BFGS steps
(bench/style.py's faithful re-implementation), side by side in one process, same VGG, device and threads, both
results scored with this yardstick:

    python -m bench.style_yardstick [--rounds 3] [--threads N] [--size 256] [--out results.json]

Each round runs the tutorial and a default job (StyleParams(size=256, seed=0): every other option at its default),
in alternating order (ABBA) so that a change in the machine's load falls on both; the ratio is default job wall
time / tutorial wall time, per round and over the rounds' medians.
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from app.style.engine import StyleEngine, pil_to_tensor
from app.style.losses import gram
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


def _speed_round(engine: StyleEngine, yardstick: "Yardstick", photo: Image.Image, painting: Image.Image,
                 size: int, order: str, steps: int | None) -> dict:
    from app.style.options import StyleParams
    from bench.style import run_tutorial

    out_size = fit_size(*photo.size, size)
    photo01 = pil_to_tensor(photo, out_size).to(engine.device)
    painting01 = pil_to_tensor(painting, StyleEngine._style_size(painting, size, 1.0)).to(engine.device)
    params = StyleParams(size=size, seed=0, **({} if steps is None else {"steps": steps}))
    row: dict = {}
    for which in order:
        start = time.perf_counter()
        if which == "t":
            image, evals = run_tutorial(engine.vgg, photo01, painting01)
            from app.style.engine import tensor_to_pil
            result, name, extra = tensor_to_pil(image), "tutorial", {"evaluations": evals}
        else:
            result, name, extra = engine.run(photo, [painting], params), "default", {"evaluations": params.steps}
        seconds = time.perf_counter() - start
        score = yardstick.score(result, photo, painting, size)
        row[name] = {"seconds": round(seconds, 2), **extra, "content_ratio": round(score.content_ratio, 4),
                     "style_ratio": round(score.style_ratio, 4), "passed": score.passed}
    row["ratio"] = round(row["default"]["seconds"] / row["tutorial"]["seconds"], 3)
    return row


def main(argv: list[str] | None = None) -> dict:
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description="default style job vs the PyTorch tutorial, side by side")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--steps", type=int, default=None, help="the default job's steps (default: the default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--content", type=Path, default=root / "data/style/chelsea.png")
    parser.add_argument("--style", type=Path, default=root / "data/style/starry_night.jpg")
    parser.add_argument("--weights", type=Path, default=root / "weights/vgg19_features_0-16.pth")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from app.style.options import StyleParams

    engine = StyleEngine(args.weights, args.device)
    yardstick = Yardstick(engine.vgg, args.device)
    photo, painting = Image.open(args.content).convert("RGB"), Image.open(args.style).convert("RGB")
    engine.run(photo, [painting], StyleParams(size=min(args.size, 128), steps=3))  # first-call costs, both sides
    print(f"device {args.device}, {torch.get_num_threads()} threads, {args.content.name} x {args.style.name}, "
          f"{args.size} px", flush=True)
    rounds = []
    for i in range(args.rounds):
        row = _speed_round(engine, yardstick, photo, painting, args.size, "td" if i % 2 == 0 else "dt", args.steps)
        rounds.append(row)
        t, d = row["tutorial"], row["default"]
        print(f"round {i + 1}: tutorial {t['seconds']:6.2f} s ({t['evaluations']} evaluations, content "
              f"{t['content_ratio']:.3f}, style {t['style_ratio']:.4f})  default job {d['seconds']:6.2f} s "
              f"({d['evaluations']} evaluations, content {d['content_ratio']:.3f}, style {d['style_ratio']:.4f})"
              f"  ratio {row['ratio']:.3f}", flush=True)
    tut = statistics.median(r["tutorial"]["seconds"] for r in rounds)
    ours = statistics.median(r["default"]["seconds"] for r in rounds)
    result = {"device": args.device, "threads": torch.get_num_threads(), "size": args.size,
              "content": args.content.name, "style": args.style.name, "rounds": rounds,
              "tutorial_s": tut, "default_s": ours, "ratio": round(ours / tut, 3),
              "median_round_ratio": statistics.median(r["ratio"] for r in rounds)}
    print(f"median: tutorial {tut:.2f} s, default job {ours:.2f} s, ratio {result['ratio']:.3f} "
          f"(median of the rounds' ratios {result['median_round_ratio']:.3f})")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
