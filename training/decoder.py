"""Train style-decoder: the network that turns VGG-19 relu3_1 features back into an image (models/decoder.py), for
instant style transfer by whitening and colouring (app/style/instant.py, docs/instant-style.md).

    python -m training.decoder                                  # the committed weights (docs/instant-style.md)
    python -m training.decoder --iterations 20 --limit 4 --weights-dir /tmp/w   # a smoke run
    python -m training.decoder --sources photos,paintings,cifar # without the Debian wallpapers

The decoder only learns to reconstruct: the loss compares its output with the input image, in pixels and in the
VGG's own features at relu1_1, relu2_1 and relu3_1 (each relative to the target's mean square), so it needs no
style data. Training images (--sources): the shipped content photos and the preset paintings except the held-out
photos (chelsea, coffee: never seen, the reconstruction PSNR is measured on them), mosaics of 32x32 CIFAR-10 photos,
and the desktop wallpapers of the Debian packages plasma-workspace-wallpapers and gnome-backgrounds
(`apt-get install plasma-workspace-wallpapers gnome-backgrounds`). Random crops at random scales, flips.

Writes weights/style-decoder.pt (a state_dict, checkpointed every --eval-every iterations, so a run cut short still
leaves weights), style-decoder.curve.png, style-decoder.history.json and the manifest's "assets" entry
"style-decoder" (sha256, config, held-out PSNR at 256 and 512 px, data sources and their licences). Ctrl-C or
SIGTERM ends the training early and still evaluates and writes everything.
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from models.decoder import FEATURE_LAYER, StyleDecoder, reconstruct
from models.vgg import VGG19Features, caffe_preprocess
from models.checkpoints import auto_device
from training.common import (WEIGHTS_DIR, count_parameters, default_data_dir, device_description, progress, save_figure, seed_everything, sha256_of)
from training.decoder_data import (HELDOUT, RASTER, SOURCE_NOTES, SOURCES, WEIGHTS_LICENCE_NOTE, CropSampler,
                                   photo_dirs, load_training_set)

NAME = "style-decoder"
LOSS_LAYERS = ("relu1_1", "relu2_1", FEATURE_LAYER)
EVAL_SIZES = (256, 512)
# --------------------------------------------------------------------------------------------- loss and evaluation

def reconstruction_loss(vgg: VGG19Features, decoder: StyleDecoder, x: torch.Tensor, feature_weight: float,
                        autocast: bool) -> tuple[torch.Tensor, dict[str, float]]:
    """pixel MSE + feature_weight x mean over LOSS_LAYERS of MSE(features(out), features(x)) / mean(features(x)^2)."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        with torch.no_grad():
            target = vgg.extract(caffe_preprocess(x), LOSS_LAYERS)
        out = decoder(target[FEATURE_LAYER])
        feats = vgg.extract(caffe_preprocess(out), LOSS_LAYERS) if feature_weight > 0 else {}
    pixel = F.mse_loss(out.float(), x)
    feature = sum((F.mse_loss(feats[n].float(), target[n].float()) / target[n].float().pow(2).mean().clamp_min(1e-8)
                   for n in feats), pixel.new_zeros(())) / max(1, len(feats))
    loss = pixel + feature_weight * feature
    return loss, {"loss": float(loss.detach()), "pixel_mse": float(pixel.detach()),
                  "feature": float(feature.detach())}


def load_rgb(path: Path, longest: int) -> torch.Tensor:
    """An image resized (LANCZOS) so its longest side is `longest`, as the server resizes a content photo."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        size = (longest, max(1, round(h * longest / w))) if w >= h else (max(1, round(w * longest / h)), longest)
        img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None].contiguous()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two RGB [0, 1] images, both quantised to 8 bits first (what a PNG answer holds)."""
    qa, qb = (t.clamp(0, 1).mul(255).round() for t in (a, b))
    mse = F.mse_loss(qa, qb).item()
    return 99.0 if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def heldout_psnr(vgg: VGG19Features, decoder: StyleDecoder, data_dir: Path, sizes=EVAL_SIZES,
                 device: torch.device | str = "cpu") -> dict[str, dict[str, float]]:
    """{photo: {str(size): PSNR}} of the reconstruction of each held-out photo, in float32 (as served)."""
    content_dir, _ = photo_dirs(data_dir)
    results: dict[str, dict[str, float]] = {}
    was_training = decoder.training
    decoder.eval()
    for name in HELDOUT:
        path = next((p for p in sorted(content_dir.glob(f"{name}.*")) if p.suffix.lower() in RASTER), None)
        if path is None:
            sys.exit(f"held-out photo {name} not found in {content_dir}")
        results[name] = {}
        for size in sizes:
            x = load_rgb(path, size).to(device)
            with torch.inference_mode():
                results[name][str(size)] = round(psnr(reconstruct(vgg, decoder, x), x), 2)
    decoder.train(was_training)
    return results


def mean_psnr(results: dict[str, dict[str, float]], size: int) -> float:
    return round(sum(r[str(size)] for r in results.values()) / len(results), 2)


# --------------------------------------------------------------------------------------------- outputs

def save_state(decoder: StyleDecoder, path: Path) -> None:
    tmp = path.with_suffix(".pt.tmp")
    torch.save({k: v.detach().cpu() for k, v in decoder.state_dict().items()}, tmp)
    tmp.replace(path)


def update_assets(weights_dir: Path, name: str, entry: dict) -> None:
    """Insert or replace one entry under the manifest's "assets" (atomic write); the models are left alone."""
    path = weights_dir / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {"models": {}}
    manifest.setdefault("assets", {})[name] = entry
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)


def plot_curve(history: dict, path: Path) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(10, 4))
    it = history["iteration"]
    ax_loss.semilogy(it, history["loss"], label="loss (smoothed)")
    ax_loss.semilogy(it, history["pixel_mse"], label="pixel MSE")
    ax_loss.semilogy(it, history["feature"], label="feature (relative)")
    ax_loss.set(xlabel="iteration", title=f"{NAME}: training loss")
    for name in HELDOUT:
        ax_psnr.plot(history["eval_iteration"], history[f"psnr_{name}"], marker="o", label=f"{name} (held out)")
    ax_psnr.set(xlabel="iteration", ylabel="PSNR at 256 px (dB)", title="held-out reconstruction")
    return save_figure(fig, (ax_loss, ax_psnr), path)


# --------------------------------------------------------------------------------------------- main

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(), help="folder holding images/ and "
                        "cifar-10-subset/ (the repo's data/style is used when images/ is absent)")
    parser.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR, help="where the weights and manifest go")
    parser.add_argument("--vgg", type=Path, default=WEIGHTS_DIR / "vgg19_features_0-16.pth",
                        help="the encoder's weights (the style engine's VGG-19)")
    parser.add_argument("--sources", default=",".join(SOURCES), help="training images, comma-separated: "
                        + ", ".join(SOURCES))
    parser.add_argument("--width", type=int, default=32, help="decoder width (64: the full mirror of VGG)")
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", type=int, default=128, help="training crop side in px (a multiple of 32)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (Adam), cosine to lr/100")
    parser.add_argument("--warmup", type=int, default=50, help="iterations of linear warm-up")
    parser.add_argument("--feature-weight", type=float, default=0.02, help="weight of the relative feature loss")
    parser.add_argument("--cifar-share", type=float, default=0.3, help="share of the crops that are CIFAR "
                        "mosaics")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                        help="bf16 autocast for the training passes (1.5x faster on this CPU); evaluation is fp32")
    parser.add_argument("--eval-every", type=int, default=100, help="held-out PSNR at 256 px and a checkpoint")
    parser.add_argument("--max-minutes", type=float, default=0, help="stop training after this long (0: never)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--limit", type=int, default=0, help="at most N wallpapers and 16N CIFAR photos (smoke)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.crop % 32:
        parser.error("--crop must be a multiple of 32")
    args.sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    seed_everything(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = auto_device(args.device)
    data = load_training_set(args.sources, args.data_dir, args.limit, args.no_progress)
    vgg = VGG19Features.from_file(args.vgg).eval().requires_grad_(False).to(device)
    decoder = StyleDecoder(width=args.width).to(device)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=args.lr)

    def lr_at(i: int) -> float:
        if i < args.warmup:
            return args.lr * (i + 1) / args.warmup
        t = (i - args.warmup) / max(1, args.iterations - args.warmup)
        return args.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))

    sampler = CropSampler(data, args.crop, args.cifar_share, torch.Generator().manual_seed(args.seed))
    args.weights_dir.mkdir(parents=True, exist_ok=True)
    weights_path = args.weights_dir / f"{NAME}.pt"
    autocast = args.precision == "bf16"
    counts = data.describe()
    print(f"== {NAME}: width {args.width} ({count_parameters(decoder):,} parameters), {args.iterations} "
          f"iterations of {args.batch_size} x {args.crop} px crops, {device_description(device)}, {args.precision}; "
          f"images: {counts}", flush=True)

    stop = {"why": None}

    def on_signal(signum, frame):
        stop["why"] = signal.Signals(signum).name

    previous = signal.signal(signal.SIGTERM, on_signal)
    history: dict[str, list] = {"iteration": [], "loss": [], "pixel_mse": [], "feature": [], "lr": [],
                                "eval_iteration": [], "seconds": [], **{f"psnr_{h}": [] for h in HELDOUT}}
    smooth: dict[str, float] = {}
    start = time.perf_counter()
    done = 0
    bar = progress(range(args.iterations), NAME, args.no_progress)
    try:
        for i in bar:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(i)
            x = sampler.batch(args.batch_size).to(device)
            loss, parts = reconstruction_loss(vgg, decoder, x, args.feature_weight, autocast)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
            optimizer.step()
            done = i + 1
            for k, v in parts.items():
                smooth[k] = v if k not in smooth else 0.95 * smooth[k] + 0.05 * v
            if done % 10 == 0 or done == 1:
                history["iteration"].append(done)
                history["lr"].append(lr_at(i))
                for k in ("loss", "pixel_mse", "feature"):
                    history[k].append(smooth[k])
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{smooth['loss']:.4f}", psnr=f"{10 * math.log10(1 / smooth['pixel_mse']):.1f}")
            minutes = (time.perf_counter() - start) / 60
            if done % args.eval_every == 0 or done == args.iterations:
                scores = heldout_psnr(vgg, decoder, args.data_dir, (256,), device)
                history["eval_iteration"].append(done)
                history["seconds"].append(round(time.perf_counter() - start, 1))
                for h in HELDOUT:
                    history[f"psnr_{h}"].append(scores[h]["256"])
                save_state(decoder, weights_path)
                print(f"  iteration {done}: loss {smooth['loss']:.5f} (pixel MSE {smooth['pixel_mse']:.5f}, feature "
                      f"{smooth['feature']:.4f}), held-out PSNR at 256 px "
                      + ", ".join(f"{h} {scores[h]['256']:.2f} dB" for h in HELDOUT)
                      + f", {minutes:.1f} min", flush=True)
            if args.max_minutes and minutes >= args.max_minutes:
                stop["why"] = f"--max-minutes {args.max_minutes:g}"
            if stop["why"]:
                break
    except KeyboardInterrupt:
        stop["why"] = "KeyboardInterrupt"
    finally:
        signal.signal(signal.SIGTERM, previous)
    training_time = round(time.perf_counter() - start, 1)
    if stop["why"]:
        print(f"stopped after {done} of {args.iterations} iterations ({stop['why']})", flush=True)

    decoder.eval()
    save_state(decoder, weights_path)
    final = heldout_psnr(vgg, decoder, args.data_dir, EVAL_SIZES, device)
    metrics = {"heldout_psnr_db": final, **{f"mean_psnr_{s}": mean_psnr(final, s) for s in EVAL_SIZES},
               "heldout": list(HELDOUT), "psnr": "RGB, 8-bit, the photo resized (LANCZOS) so its longest side is the "
               "size, encoded to relu3_1 and decoded in float32", "train_pixel_mse_smoothed": round(smooth["pixel_mse"], 6)}
    history_path = args.weights_dir / f"{NAME}.history.json"
    history_path.write_text(json.dumps({"history": history, "metrics": metrics}, indent=1) + "\n")
    curve = plot_curve(history, args.weights_dir / f"{NAME}.curve.png")
    wallpapers = [{"file": i.name, "licence": i.licence} for i in data.images if i.source == "wallpapers"]
    entry = {
        "file": weights_path.name, "sha256": sha256_of(weights_path),
        "architecture": "StyleDecoder", "module": "models.decoder", "config": {"width": args.width},
        "inverts": f"vgg19-features {FEATURE_LAYER} (Caffe convention); output RGB [0, 1]",
        "encoder_sha256": sha256_of(args.vgg),
        "parameters": count_parameters(decoder), "metrics": metrics,
        "hyperparameters": {"iterations": args.iterations, "iterations_done": done, "batch_size": args.batch_size,
                            "crop": args.crop, "lr": args.lr, "schedule": f"linear warm-up {args.warmup}, cosine "
                            "to lr/100", "optimizer": "Adam, gradient norm clipped at 1", "loss": "pixel MSE + "
                            f"{args.feature_weight:g} x mean relative feature MSE at {', '.join(LOSS_LAYERS)}",
                            "cifar_share": args.cifar_share, "precision": args.precision, "seed": args.seed},
        "data": {"sources": {s: {**SOURCE_NOTES[s], "images": counts.get(s, 0)} for s in args.sources},
                 "wallpapers": wallpapers, "weights_licence_note": WEIGHTS_LICENCE_NOTE if wallpapers else
                 "every source is public domain, CC0 or CIFAR-10 (no share-alike terms)"},
        "command": "python -m training.decoder " + " ".join(argv if argv is not None else sys.argv[1:]),
        "torch_version": torch.__version__, "training_time_s": training_time,
        "trained_on": device_description(device) + f", {torch.get_num_threads()} threads",
        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "curve": curve, "history": history_path.name,
    }
    if stop["why"]:
        entry["stopped_early"] = f"after {done} of {args.iterations} iterations ({stop['why']})"
    update_assets(args.weights_dir, NAME, entry)
    print("held-out PSNR: " + "; ".join(f"{h}: " + ", ".join(f"{s} px {final[h][s]:.2f} dB" for s in final[h])
                                          for h in HELDOUT))
    print(f"saved {weights_path} ({weights_path.stat().st_size / 1e6:.2f} MB), sha256 {entry['sha256'][:12]}.., "
          f"{training_time / 60:.1f} min")
    return entry


if __name__ == "__main__":
    main()
