"""Style-transfer speed and quality: our engine against the PyTorch tutorial's algorithm, same process, same device.

    python -m bench.style [--size 256] [--device cpu] [--content data/style/chelsea.png]
                          [--style data/style/starry_night.jpg] [--out bench-out/]

(a) "Neural Transfer Using PyTorch" (pytorch.org tutorial), re-implemented faithfully: the input image (a copy of
    the content, RGB in [0, 1]) is optimised with torch.optim.LBFGS at its defaults (lr 1, max_iter 20 per step()),
    the image is clamped to [0, 1] at each closure evaluation, and `while run[0] <= 300` counts closure
    evaluations as the tutorial does. Style weight 1e6, content weight 1; content loss at conv_4 and style losses at
    conv_1..conv_5 (conv outputs, before ReLU), i.e. conv2_2 and conv1_1, conv1_2, conv2_1, conv2_2, conv3_1;
    the weights are divided by CAFFE_SCALE^4 and CAFFE_SCALE^2 for the Caffe input scale (see below);
    Gram matrices divided by the number of elements; MSE losses. The tutorial's torchvision VGG and ImageNet
    mean/std normalisation are replaced by our Caffe VGG-19 with Caffe preprocessing (its weights need it).
(b) our engine, same layers and weights (its absolute losses: `run(..., relative=False)`), its default schedule and
    step count.
(c) our engine with its defaults (default layers and weights): timed only, its objective is another one.

Both (a) and (b) are scored with ONE yardstick: the tutorial's loss (same layers, weights, targets) evaluated on
the final images as saved (8-bit RGB). Lower is better.

Evaluations to the yardstick (issue 16: init=instant against init=content), a mode of its own:

    python -m bench.style --evals-to-yardstick [--sizes 128 256] [--pairs chelsea:starry_night ...]
                          [--max-steps 400] [--threads 1] [--out results.json]

For each photo x painting x size and each init, the fewest `steps` (L-BFGS evaluations over all scales, the job
option) for which a default job (seed 0) passes bench/style_yardstick.py's criterion, the one the tutorial's 300-step
result is measured by: content ratio <= 0.6 ("photo kept") and style ratio <= 0.2 ("style arrived"). Found by
doubling from 8 and then bisecting (each probe is a whole job of that many steps; a job with fewer steps also has a
shorter coarse stage, so a probe is what a user asking for that many steps gets), to within 10 %. Also scored: the
instant image alone and both inits at the default 250 steps (is the photo kept as well?).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from app.style.engine import StyleEngine, pil_to_tensor, tensor_to_pil
from app.style.losses import gram
from app.style.options import TUTORIAL_CONTENT_LAYERS, TUTORIAL_STYLE_LAYERS, StyleParams, fit_size
from models.vgg import VGG19Features, caffe_preprocess

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL_STEPS = 300
# The tutorial's weights (style 1e6, content 1) are for features of ImageNet-mean/std normalised inputs; Caffe inputs
# are about S = 255 * 0.226 (the mean ImageNet std) times larger, so features are about S times larger, content MSE S^2
# and Gram MSE S^4 times larger. Dividing the weights accordingly keeps the tutorial's balance and loss scale.
CAFFE_SCALE = 255.0 * (0.229 + 0.224 + 0.225) / 3
TUTORIAL_STYLE_WEIGHT = 1e6 / CAFFE_SCALE**4
TUTORIAL_CONTENT_WEIGHT = 1.0 / CAFFE_SCALE**2


def tutorial_losses(vgg: VGG19Features, img01: torch.Tensor, content_feats: dict, style_grams: dict):
    """The tutorial's (unweighted) style and content scores for an RGB [0, 1] image."""
    feats = vgg.extract(caffe_preprocess(img01), TUTORIAL_CONTENT_LAYERS + TUTORIAL_STYLE_LAYERS)
    content = sum(F.mse_loss(feats[n], content_feats[n]) for n in TUTORIAL_CONTENT_LAYERS)
    style = sum(F.mse_loss(gram(feats[n]), style_grams[n]) for n in TUTORIAL_STYLE_LAYERS)
    return style, content


def targets(vgg: VGG19Features, content01: torch.Tensor, style01: torch.Tensor):
    with torch.no_grad():
        cf = vgg.extract(caffe_preprocess(content01), TUTORIAL_CONTENT_LAYERS)
        sf = vgg.extract(caffe_preprocess(style01), TUTORIAL_STYLE_LAYERS)
        return ({n: cf[n] for n in TUTORIAL_CONTENT_LAYERS}, {n: gram(sf[n]) for n in TUTORIAL_STYLE_LAYERS})


def run_tutorial(vgg: VGG19Features, content01: torch.Tensor, style01: torch.Tensor,
                 num_steps: int = TUTORIAL_STEPS) -> tuple[torch.Tensor, int]:
    """run_style_transfer() of the tutorial; returns the image and the closure evaluations it made."""
    content_feats, style_grams = targets(vgg, content01, style01)
    input_img = content01.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([input_img])
    run = [0]
    while run[0] <= num_steps:
        def closure():
            with torch.no_grad():
                input_img.clamp_(0, 1)
            optimizer.zero_grad()
            style_score, content_score = tutorial_losses(vgg, input_img, content_feats, style_grams)
            style_score = style_score * TUTORIAL_STYLE_WEIGHT
            content_score = content_score * TUTORIAL_CONTENT_WEIGHT
            loss = style_score + content_score
            loss.backward()
            run[0] += 1
            return style_score + content_score
        optimizer.step(closure)
    with torch.no_grad():
        input_img.clamp_(0, 1)
    return input_img.detach(), run[0]


def yardstick(vgg: VGG19Features, image: Image.Image, content01: torch.Tensor, style01: torch.Tensor) -> dict:
    content_feats, style_grams = targets(vgg, content01, style01)
    with torch.no_grad():
        style, content = tutorial_losses(vgg, pil_to_tensor(image).to(content01.device), content_feats, style_grams)
    style_w, content_w = float(style) * TUTORIAL_STYLE_WEIGHT, float(content) * TUTORIAL_CONTENT_WEIGHT
    return {"style": style_w, "content": content_w, "total": style_w + content_w}


# (photo, painting) pairs of the evaluations-to-yardstick mode: every shipped photo, every preset twice
DEFAULT_PAIRS = ("chelsea:starry_night", "chelsea:shipwreck", "coffee:the_scream", "coffee:udnie",
                 "astronaut:starry_night", "astronaut:udnie", "rocket:shipwreck", "rocket:the_scream")
# what is compared: name -> (init, coarse-to-fine schedule); the last runs every evaluation at full size (not what a
# job does: measured to show what the coarse stage costs an instant start)
VARIANTS = {"content": ("content", True), "instant": ("instant", True), "content_one_scale": ("content", False),
            "instant_one_scale": ("instant", False)}
SEARCH_START = 8  # steps of the first probe
SEARCH_PRECISION = 0.05  # bisect until the bracket is within 5 % (or exact below 20 steps)


def _style_file(name: str) -> Path:
    found = sorted((ROOT / "data/style").glob(f"{name}.*"))
    if not found:
        raise SystemExit(f"no data/style/{name}.* (photos and paintings are looked up there)")
    return found[0]


def fewest_steps(passes, max_steps: int) -> tuple[int | None, dict[int, object]]:
    """The fewest steps n (1..max_steps) with passes(n).passed, by doubling from SEARCH_START then bisecting
    (assumes more steps do not fail once fewer pass); returns (n or None when max_steps fails, every probe)."""
    probes: dict[int, object] = {}

    def probe(n: int):
        if n not in probes:
            probes[n] = passes(n)
        return probes[n].passed

    lo, hi = 0, None  # lo fails (0: nothing run), hi passes
    n = min(SEARCH_START, max_steps)
    if probe(n):
        hi = n
    else:
        lo = n
        while hi is None:
            if n >= max_steps:
                return None, probes
            n = min(2 * n, max_steps)
            if probe(n):
                hi = n
            else:
                lo = n
    while hi - lo > max(1, SEARCH_PRECISION * hi):  # lo fails (or is 0), hi passes
        mid = (lo + hi) // 2
        if probe(mid):
            hi = mid
        else:
            lo = mid
    return hi, probes


def evals_to_yardstick(engine: StyleEngine, pairs: list[tuple[str, str]], sizes: list[int], max_steps: int,
                       final_steps: int | None) -> list[dict]:
    """The evaluations-to-yardstick mode (see the module's docstring); one row per pair and size."""
    from bench.style_yardstick import Yardstick

    yardstick = Yardstick(engine.vgg, engine.device)
    rows = []
    for size in sizes:
        for photo_name, painting_name in pairs:
            photo = Image.open(_style_file(photo_name)).convert("RGB")
            painting = Image.open(_style_file(painting_name)).convert("RGB")
            row: dict = {"photo": photo_name, "painting": painting_name, "size": size}
            styler = engine.instant_styler()
            instant = styler.stylise(photo, [styler.upload_stats(painting, size)], [1.0], size)
            row["instant_alone"] = _ratios(yardstick.score(instant, photo, painting, size))
            for name, (init, coarse_to_fine) in VARIANTS.items():
                start = time.perf_counter()

                def passes(steps: int, init=init, coarse_to_fine=coarse_to_fine):
                    began = time.perf_counter()
                    image = engine.run(photo, [painting], StyleParams(size=size, steps=steps, seed=0, init=init),
                                       coarse_to_fine=coarse_to_fine)
                    score = yardstick.score(image, photo, painting, size)
                    return _Probe(score, time.perf_counter() - began)

                steps, probes = fewest_steps(passes, max_steps)
                cell = {"steps": steps, "probes": {n: pr.as_dict() for n, pr in sorted(probes.items())}}
                if steps is not None:
                    cell["at_steps"] = cell["probes"][steps]
                if final_steps and coarse_to_fine:
                    cell["final"] = {"steps": final_steps, **passes(final_steps).as_dict()}
                cell["seconds"] = round(time.perf_counter() - start, 1)
                row[name] = cell
            c = row["content"]["steps"]
            for name in VARIANTS:
                if name != "content":
                    n = row[name]["steps"]
                    row[f"ratio_{name}"] = round(n / c, 3) if c and n else None
            row["ratio"] = row["ratio_instant"]
            c1, i1 = row["content_one_scale"]["steps"], row["instant_one_scale"]["steps"]
            row["ratio_one_scale"] = round(i1 / c1, 3) if c1 and i1 else None  # both at full size throughout
            rows.append(row)
            print(_evals_line(row), flush=True)
    return rows


def _ratios(score) -> dict:
    return {"content_ratio": round(score.content_ratio, 4), "style_ratio": round(score.style_ratio, 4),
            "passed": score.passed}


@dataclass
class _Probe:
    """One job of the search: its yardstick score and wall time."""
    score: object
    seconds: float

    @property
    def passed(self) -> bool:
        return self.score.passed

    def as_dict(self) -> dict:
        return {**_ratios(self.score), "seconds": round(self.seconds, 2)}


def _evals_line(row: dict) -> str:
    def cell(c: dict) -> str:
        if c["steps"] is None:
            return f"{'>max':>5} {'':22}"
        a = c["at_steps"]
        return f"{c['steps']:4d} ({a['content_ratio']:.2f} / {a['style_ratio']:.3f}, {a['seconds']:5.1f} s)"

    def final(c: dict) -> str:
        f = c.get("final")
        return f"{f['content_ratio']:.2f} / {f['style_ratio']:.3f}" if f else "-"

    def ratio(name: str) -> str:
        value = row[f"ratio_{name}"]
        return f"{value:.2f}" if value is not None else "-"
    alone = row["instant_alone"]
    return (f"{row['photo'] + ' x ' + row['painting']:24s} {row['size']:4d} | content {cell(row['content'])} | "
            f"instant {cell(row['instant'])} ratio {ratio('instant'):>4} | one scale: content "
            f"{cell(row['content_one_scale'])} instant {cell(row['instant_one_scale'])} ratio "
            f"{ratio('one_scale'):>4} | alone "
            f"{alone['content_ratio']:.2f} / {alone['style_ratio']:.3f} | at {row['content'].get('final', {}).get('steps', '-')}"
            f": content {final(row['content'])}, instant {final(row['instant'])}")


def evals_main(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = StyleEngine(args.weights, args.device)
    pairs = [tuple(p.split(":", 1)) for p in args.pairs]
    warm = Image.open(_style_file(pairs[0][0])).convert("RGB"), Image.open(_style_file(pairs[0][1])).convert("RGB")
    engine.run(warm[0], [warm[1]], StyleParams(size=64, steps=3, init="instant", seed=0))  # first-call costs
    print(f"device {args.device}, {torch.get_num_threads()} threads, precision {engine.precision}; fewest steps "
          f"to pass the yardstick (content <= 0.6, style <= 0.2; seed 0), (content / style ratios there); ratio = "
          "instant / content (seconds: that job's wall time); one scale = every evaluation at full size (not a "
          "job's schedule); alone = the instant image; at N = both inits at N steps", flush=True)
    rows = evals_to_yardstick(engine, pairs, args.sizes, args.max_steps, args.final_steps)
    summary = []
    for size in args.sizes:
        for name in ("instant", "one_scale"):  # instant / content (a job's schedule); the same, both at one scale
            ratios = sorted(r[f"ratio_{name}"] for r in rows if r["size"] == size and r[f"ratio_{name}"] is not None)
            if not ratios:
                continue
            fewer = sum(1 for x in ratios if x < 1)
            worse = sum(1 for x in ratios if x > 1)
            median = statistics.median(ratios)
            summary.append({"size": size, "variant": name, "pairs": len(ratios), "fewer": fewer, "more": worse,
                            "median_ratio": round(median, 3)})
            what = "init=instant" if name == "instant" else "init=instant at one scale"
            print(f"{size} px, {what}: fewer evaluations than init=content{' at one scale' * (name != 'instant')} on "
                  f"{fewer} / {len(ratios)} pairs, more on {worse}; median ratio {median:.2f}", flush=True)
    result = {"device": args.device, "threads": torch.get_num_threads(), "precision": engine.precision,
              "rows": rows, "summary": summary}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--content", type=Path, default=ROOT / "data/style/chelsea.png")
    parser.add_argument("--style", type=Path, default=ROOT / "data/style/starry_night.jpg")
    parser.add_argument("--weights", type=Path, default=ROOT / "weights/vgg19_features_0-16.pth")
    parser.add_argument("--steps", type=int, default=None, help="our engine's steps (default: its default)")
    parser.add_argument("--out", type=Path, default=None, help="folder for both images and results.json (with "
                        "--evals-to-yardstick: the JSON file)")
    parser.add_argument("--evals-to-yardstick", action="store_true", help="instead: the fewest steps to pass the "
                        "yardstick from init=content and from init=instant, per pair and size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="(--evals-to-yardstick)")
    parser.add_argument("--pairs", nargs="+", default=list(DEFAULT_PAIRS), help="photo:painting names in "
                        "data/style (--evals-to-yardstick)")
    parser.add_argument("--max-steps", type=int, default=400, help="(--evals-to-yardstick) give up beyond")
    parser.add_argument("--final-steps", type=int, default=250, help="(--evals-to-yardstick) also score both inits "
                        "at this many steps (0: not)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.evals_to_yardstick:
        return evals_main(args)

    device = torch.device(args.device)
    engine = StyleEngine(args.weights, device)
    vgg = engine.vgg
    content_img, style_img = Image.open(args.content), Image.open(args.style)
    size = fit_size(*content_img.size, args.size)
    content01 = pil_to_tensor(content_img, size).to(device)
    style01 = pil_to_tensor(style_img, fit_size(*style_img.size, args.size)).to(device)
    print(f"device {device}, threads {torch.get_num_threads()}, content {args.content.name} {size[0]}x{size[1]}, "
          f"style {args.style.name}")

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - start

    # warm-up (allocator, cuDNN autotune) so that neither side pays first-call costs
    engine.run(content_img, [style_img], StyleParams(size=min(args.size, 128), steps=3))

    (tut_img, evals), tut_s = timed(lambda: run_tutorial(vgg, content01, style01))
    tut_pil = tensor_to_pil(tut_img)
    extra = {} if args.steps is None else {"steps": args.steps}
    same = StyleParams(size=args.size, content_layers=list(TUTORIAL_CONTENT_LAYERS),
                       style_layers=list(TUTORIAL_STYLE_LAYERS), style_weight=TUTORIAL_STYLE_WEIGHT,
                       content_weight=TUTORIAL_CONTENT_WEIGHT, tv_weight=0.0, **extra)
    ours_pil, ours_s = timed(lambda: engine.run(content_img, [style_img], same, relative=False))
    default_pil, default_s = timed(lambda: engine.run(content_img, [style_img], StyleParams(size=args.size, **extra)))

    result = {
        "device": str(device), "threads": torch.get_num_threads(), "size": list(size),
        "content": args.content.name, "style": args.style.name,
        "tutorial": {"seconds": round(tut_s, 2), "evaluations": evals, **yardstick(vgg, tut_pil, content01, style01)},
        "ours_tutorial_objective": {"seconds": round(ours_s, 2), "steps": same.steps,
                                    **yardstick(vgg, ours_pil, content01, style01)},
        "ours_default": {"seconds": round(default_s, 2), "steps": same.steps,
                         **yardstick(vgg, default_pil, content01, style01)},
    }
    result["time_ratio"] = round(ours_s / tut_s, 3)
    result["default_time_ratio"] = round(default_s / tut_s, 3)
    t, o = result["tutorial"], result["ours_tutorial_objective"]
    print(f"(a) tutorial        {tut_s:7.2f} s  {evals} evaluations  yardstick {t['total']:.4g} "
          f"(style {t['style']:.4g}, content {t['content']:.4g})")
    print(f"(b) ours, same obj. {ours_s:7.2f} s  {same.steps} evaluations  yardstick {o['total']:.4g} "
          f"(style {o['style']:.4g}, content {o['content']:.4g})")
    print(f"(c) ours, defaults  {default_s:7.2f} s")
    print(f"time ratio (b)/(a) {result['time_ratio']:.3f}, (c)/(a) {result['default_time_ratio']:.3f}; "
          f"yardstick ratio (b)/(a) {o['total'] / t['total']:.3f}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        tut_pil.save(args.out / "tutorial.png")
        ours_pil.save(args.out / "ours_tutorial_objective.png")
        default_pil.save(args.out / "ours_default.png")
        (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


LAYER_CANDIDATES = {
    "A tutorial (conv)": (("conv2_2",), ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1")),
    "B tutorial (relu)": (("relu2_2",), ("relu1_1", "relu1_2", "relu2_1", "relu2_2", "relu3_1")),
    "C content relu3_2": (("relu3_2",), ("relu1_1", "relu1_2", "relu2_1", "relu2_2", "relu3_1", "relu3_4")),
    "D content conv3_4": (("conv3_4",), ("relu1_1", "relu2_1", "relu3_1", "relu3_4")),
}


def balanced_weights(vgg: VGG19Features, content01: torch.Tensor, style01: torch.Tensor, content_layers, style_layers):
    """Weights giving a layer set the tutorial set's balance: each term is rescaled so that its value on a reference
    input (style: the content photo; content: a flat grey image) equals the tutorial term's."""
    grey = torch.full_like(content01, 0.5)

    def terms(cl, sl, img):
        with torch.no_grad():
            cf = vgg.extract(caffe_preprocess(content01), cl)
            sf = vgg.extract(caffe_preprocess(style01), sl)
            f = vgg.extract(caffe_preprocess(img), list(cl) + list(sl))
            c = sum(float(F.mse_loss(f[n], cf[n])) for n in cl)
            s = sum(float(F.mse_loss(gram(f[n]), gram(sf[n]))) for n in sl)
        return c, s
    c_tut, _ = terms(TUTORIAL_CONTENT_LAYERS, TUTORIAL_STYLE_LAYERS, grey)
    _, s_tut = terms(TUTORIAL_CONTENT_LAYERS, TUTORIAL_STYLE_LAYERS, content01)
    c_new, _ = terms(content_layers, style_layers, grey)
    _, s_new = terms(content_layers, style_layers, content01)
    return TUTORIAL_CONTENT_WEIGHT * c_tut / c_new, TUTORIAL_STYLE_WEIGHT * s_tut / s_new


def compare_layers(engine: StyleEngine, pairs: list[tuple[Path, Path]], size: int, out: Path) -> list[dict]:
    """Runs every candidate layer set on each (content, style) pair with balanced weights; one picture, rows =
    pairs, columns = content, style, candidates."""
    rows, report = [], []
    for content_path, style_path in pairs:
        content_img, style_img = Image.open(content_path), Image.open(style_path)
        content01 = pil_to_tensor(content_img, fit_size(*content_img.size, size))
        style01 = pil_to_tensor(style_img, fit_size(*style_img.size, size))
        row = [tensor_to_pil(content01), tensor_to_pil(style01)]
        for name, (cl, sl) in LAYER_CANDIDATES.items():
            cw, sw = balanced_weights(engine.vgg, content01, style01, cl, sl)
            params = StyleParams(size=size, content_layers=list(cl), style_layers=list(sl), content_weight=cw,
                                 style_weight=sw, seed=0)
            start = time.perf_counter()
            row.append(engine.run(content_img, [style_img], params, relative=False))  # absolute, balanced weights
            report.append({"pair": [content_path.name, style_path.name], "candidate": name, "content_weight": cw,
                           "style_weight": sw, "seconds": round(time.perf_counter() - start, 2)})
            print(report[-1], flush=True)
        rows.append(row)
    cell = size + 8
    sheet = Image.new("RGB", (cell * len(rows[0]), cell * len(rows)), "white")
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            img = img.copy()
            img.thumbnail((size, size))
            sheet.paste(img, (c * cell + (cell - img.width) // 2, r * cell + (cell - img.height) // 2))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return report


if __name__ == "__main__":
    main()
