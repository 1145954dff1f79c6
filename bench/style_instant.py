"""Instant style (POST /v1/style/instant's work, app/style/instant.py) against a Gatys job of the same size, side by
side in one process (same VGG file, device and threads), both scored with the tutorial yardstick
(bench/style_yardstick.py: "photo kept" content ratio <= 0.6, "style arrived" style ratio <= 0.2).

    python -m bench.style_instant                         # 512 px, the held-out photos x every preset
    python -m bench.style_instant --sizes 256 512 --rounds 5 --out var/style-instant/results.json
    python -m bench.style_instant --gatys-steps 0         # instant only (no Gatys job)

Per size and pair, timed from the request's bytes to the PNG bytes (decode, statistics, WCT, decoder, PNG), the
median of --rounds:
- preset: the painting's statistics cached (computed once beforehand, as the server does after the first request);
- upload: the painting decoded and encoded every time (an uploaded painting);
and once per size a default Gatys job (StyleParams(size, seed=0), --gatys-steps evaluations) on the first pair,
whose time the instant ones are divided by. Also: the decoder's held-out reconstruction PSNR (chelsea, coffee: never
trained on) at each size, the targets of issue 16 (512 px: preset <= 1.0 s, upload <= 1.5 s, PSNR >= 28 dB).
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from pathlib import Path

import torch
from PIL import Image

from preprocessing.decoding import open_image
from app.style import presets
from app.style.engine import StyleEngine
from app.style.instant import InstantStyler
from app.style.options import DEFAULT_STEPS, StyleParams, fit_size
from bench.style_yardstick import Yardstick

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ["chelsea.png", "coffee.png"]  # held out from the decoder's training
TARGETS = {"preset_s": 1.0, "upload_s": 1.5, "psnr_db": 28.0}  # at 512 px (issue 16)
MAX_PIXELS = 40_000_000


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)  # as the endpoint encodes
    return buffer.getvalue()


def instant_once(styler: InstantStyler, content: bytes, size: int, preset: str | None = None,
                 painting: bytes | None = None) -> tuple[bytes, float]:
    """The endpoint's work on the request's bytes; (PNG, seconds)."""
    start = time.perf_counter()
    photo = open_image(content, MAX_PIXELS, at_least=size)
    if painting is not None:
        stats = styler.upload_stats(open_image(painting, MAX_PIXELS, at_least=size), size)
    else:
        stats = styler.preset_stats(preset, size)
    png = png_bytes(styler.stylise(photo, [stats], [1.0], size))
    return png, time.perf_counter() - start


def psnr(a: Image.Image, b: Image.Image) -> float:
    import math
    import numpy as np
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return 99.0 if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512])
    parser.add_argument("--photos", nargs="+", default=PHOTOS, help="files in data/style")
    parser.add_argument("--paintings", nargs="+", default=[p["name"] for p in presets.list_presets()])
    parser.add_argument("--rounds", type=int, default=5, help="timed repetitions (the median is reported)")
    parser.add_argument("--gatys-steps", type=int, default=DEFAULT_STEPS, help="evaluations of the Gatys job "
                        "(0: no job)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="the styler's arithmetic (auto: bfloat16 on a CPU that has it, as the server)")
    parser.add_argument("--weights-dir", type=Path, default=ROOT / "weights")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--save-images", type=Path, default=None, help="write every result PNG into this folder")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    vgg_path = args.weights_dir / "vgg19_features_0-16.pth"
    styler = InstantStyler.load([args.weights_dir], [vgg_path], args.device, args.precision)
    engine = StyleEngine(vgg_path, args.device)
    yardstick = Yardstick(engine.vgg, args.device)
    if args.save_images:
        args.save_images.mkdir(parents=True, exist_ok=True)
    photos = {name: (ROOT / "data" / "style" / name).read_bytes() for name in args.photos}
    paintings = {name: presets.preset_path(name).read_bytes() for name in args.paintings}
    entry = styler.entry
    print(f"device {args.device}, {torch.get_num_threads()} threads, instant in {styler.precision}; decoder width {entry.get('config', {})}, "
          f"{entry.get('parameters', '?')} parameters, sha256 {str(entry.get('sha256'))[:12]}..", flush=True)
    # first-call costs (allocations, the JIT of the first conv sizes) paid before anything is timed
    instant_once(styler, photos[args.photos[0]], min(args.sizes), args.paintings[0])
    result: dict = {"device": args.device, "threads": torch.get_num_threads(), "precision": styler.precision,
                    "decoder_sha256": entry.get("sha256"),
                    "rounds": args.rounds, "sizes": {}}
    for size in args.sizes:
        row: dict = {"psnr": {}, "pairs": []}
        for name, data in photos.items():
            photo = Image.open(io.BytesIO(data)).convert("RGB")
            photo_at = photo.resize(fit_size(*photo.size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
            row["psnr"][name] = round(psnr(styler.reconstruct(photo, size), photo_at), 2)
        for photo_name, content in photos.items():
            photo = Image.open(io.BytesIO(content)).convert("RGB")
            for painting_name, painting_data in paintings.items():
                first_png, first_s = instant_once(styler, content, size, painting_name)  # computes + caches
                preset_times = [instant_once(styler, content, size, painting_name)[1] for _ in range(args.rounds)]
                upload_times = [instant_once(styler, content, size, painting=painting_data)[1]
                                for _ in range(args.rounds)]
                painting = Image.open(io.BytesIO(painting_data)).convert("RGB")
                out = Image.open(io.BytesIO(first_png)).convert("RGB")
                score = yardstick.score(out, photo, painting, size)
                if args.save_images:
                    out.save(args.save_images / f"instant_{Path(photo_name).stem}_{painting_name}_{size}.png")
                pair = {"photo": photo_name, "painting": painting_name, "first_call_s": round(first_s, 3),
                        "preset_s": round(statistics.median(preset_times), 3),
                        "upload_s": round(statistics.median(upload_times), 3),
                        "content_ratio": round(score.content_ratio, 3), "style_ratio": round(score.style_ratio, 3),
                        "photo_kept": score.photo_kept, "style_arrived": score.style_arrived}
                row["pairs"].append(pair)
                print(f"{size} px {photo_name} x {painting_name}: preset {pair['preset_s']:.3f} s (first call "
                      f"{pair['first_call_s']:.3f} s), upload {pair['upload_s']:.3f} s; content "
                      f"{pair['content_ratio']:.3f}{'' if score.photo_kept else ' (>0.6)'}, style "
                      f"{pair['style_ratio']:.3f}{'' if score.style_arrived else ' (>0.2)'}", flush=True)
        row["preset_s"] = statistics.median(p["preset_s"] for p in row["pairs"])
        row["upload_s"] = statistics.median(p["upload_s"] for p in row["pairs"])
        row["photo_kept"] = sum(p["photo_kept"] for p in row["pairs"])
        row["style_arrived"] = sum(p["style_arrived"] for p in row["pairs"])
        print(f"{size} px: median preset {row['preset_s']:.3f} s, upload {row['upload_s']:.3f} s; photo kept "
              f"{row['photo_kept']}/{len(row['pairs'])}, style arrived {row['style_arrived']}/{len(row['pairs'])}; "
              f"held-out reconstruction PSNR " + ", ".join(f"{k} {v:.2f} dB" for k, v in row["psnr"].items()),
              flush=True)
        if args.gatys_steps:
            photo_name, painting_name = args.photos[0], args.paintings[0]
            photo = Image.open(io.BytesIO(photos[photo_name])).convert("RGB")
            painting = Image.open(io.BytesIO(paintings[painting_name])).convert("RGB")
            start = time.perf_counter()
            job = engine.run(photo, [painting], StyleParams(size=size, seed=0, steps=args.gatys_steps))
            seconds = time.perf_counter() - start
            score = yardstick.score(job, photo, painting, size)
            if args.save_images:
                job.save(args.save_images / f"gatys_{Path(photo_name).stem}_{painting_name}_{size}.png")
            same = next(p for p in row["pairs"] if p["photo"] == photo_name and p["painting"] == painting_name)
            row["gatys"] = {"photo": photo_name, "painting": painting_name, "steps": args.gatys_steps,
                            "seconds": round(seconds, 2), "content_ratio": round(score.content_ratio, 3),
                            "style_ratio": round(score.style_ratio, 3), "passed": score.passed,
                            "preset_ratio": round(same["preset_s"] / seconds, 5),
                            "upload_ratio": round(same["upload_s"] / seconds, 5)}
            g = row["gatys"]
            print(f"{size} px Gatys job ({photo_name} x {painting_name}, {args.gatys_steps} steps): {seconds:.1f} s, "
                  f"content {g['content_ratio']:.3f}, style {g['style_ratio']:.3f}; instant / job: preset "
                  f"{g['preset_ratio']:.4f} ({seconds / same['preset_s']:.0f}x faster), upload {g['upload_ratio']:.4f} "
                  f"({seconds / same['upload_s']:.0f}x faster)", flush=True)
        if size == 512:
            row["targets"] = {
                "preset_s": {"target": TARGETS["preset_s"], "measured": row["preset_s"],
                             "met": row["preset_s"] <= TARGETS["preset_s"]},
                "upload_s": {"target": TARGETS["upload_s"], "measured": row["upload_s"],
                             "met": row["upload_s"] <= TARGETS["upload_s"]},
                "psnr_db": {"target": TARGETS["psnr_db"], "measured": row["psnr"],
                            "met": all(v >= TARGETS["psnr_db"] for v in row["psnr"].values())}}
            print("512 px targets: " + "; ".join(f"{k} {'met' if v['met'] else 'NOT met'}"
                                                  for k, v in row["targets"].items()), flush=True)
        result["sizes"][str(size)] = row
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
