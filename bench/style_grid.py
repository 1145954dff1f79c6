"""The style-balance grid (issue 11): every content photo x every painting x every size at the DEFAULT options,
scored with the tutorial yardstick (bench/style_yardstick.py).

    python -m bench.style_grid                                  # 64, 128, 256 for all cells, then the docs
    python -m bench.style_grid --sizes 512 --photos rocket.jpg chelsea.png --paintings starry_night strokes
    python -m bench.style_grid --report-only                    # rebuild table, picture and markdown from the cache

Each finished cell is cached (var/style-grid/results.json and the result PNG), so runs can be split and resumed;
--fresh re-runs cached cells. The table lists both ratios per cell and pass/fail; `docs/style-grid.png` shows
sizes (rows) x paintings (columns) for rocket.jpg and chelsea.png, and docs/style-balance.md holds the table.
Painting columns: the four presets and the generated high-contrast paintings of bench/paintings.py.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "var" / "style-grid"
PHOTOS = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"]
SIZES = [64, 128, 256, 512]
PICTURE_PHOTOS = ["rocket.jpg", "chelsea.png"]
TILE = 128


def paintings() -> list[str]:
    from app.style.presets import list_presets
    from bench.paintings import PAINTINGS
    return [p["name"] for p in list_presets()] + list(PAINTINGS)


def load_painting(name: str) -> Image.Image:
    from app.style.presets import PRESETS, preset_path
    from bench.paintings import make_painting
    return Image.open(preset_path(name)) if name in PRESETS else make_painting(name)


def key(photo: str, painting: str, size: int) -> str:
    return f"{Path(photo).stem}__{painting}__{size}"


_engine = None


def _run_cell(cell: tuple[str, str, int, str]) -> dict:
    """One job at the default options (seed 0) in a worker process; returns its yardstick scores."""
    global _engine
    photo_name, painting_name, size, device = cell
    torch.set_num_threads(1)
    from app.style.engine import StyleEngine
    from app.style.options import StyleParams
    from bench.style_yardstick import Yardstick
    if _engine is None:
        _engine = StyleEngine(ROOT / "weights" / "vgg19_features_0-16.pth", device)
    photo = Image.open(ROOT / "data" / "style" / photo_name)
    painting = load_painting(painting_name)
    start = time.perf_counter()
    result = _engine.run(photo, [painting], StyleParams(size=size, seed=0))
    seconds = time.perf_counter() - start
    CACHE.mkdir(parents=True, exist_ok=True)
    result.save(CACHE / f"{key(photo_name, painting_name, size)}.png")
    score = Yardstick(_engine.vgg, device).score(result, photo, painting, size)
    return {"photo": photo_name, "painting": painting_name, "size": size, "seconds": round(seconds, 1),
            "device": device, **score.as_dict()}


def load_cache() -> dict:
    path = CACHE / "results.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def save_cache(results: dict) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, CACHE / "results.json")


def table(results: dict, sizes: list[int]) -> list[str]:
    """Markdown: one row per (photo, size), one column per painting, each cell 'content / style ratio ✓|✗'."""
    names = paintings()
    lines = ["| photo | size | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for photo in PHOTOS:
        for size in sizes:
            cells = []
            for name in names:
                r = results.get(key(photo, name, size))
                cells.append("not run" if r is None else
                             f"{r['content_ratio']:.2f} / {r['style_ratio']:.3f} {'pass' if r['passed'] else '**FAIL**'}")
            lines.append(f"| {photo} | {size} | " + " | ".join(cells) + " |")
    return lines


def summary(results: dict) -> list[str]:
    lines = []
    names = set(paintings())  # probes run with --paintings stay in the cache, not in the grid's summary
    for size in SIZES:
        rows = [r for r in results.values() if r["size"] == size and r["painting"] in names]
        if not rows:
            continue
        passed = sum(r["passed"] for r in rows)
        worst_c = max(rows, key=lambda r: r["content_ratio"])
        worst_s = max(rows, key=lambda r: r["style_ratio"])
        secs = sum(r["seconds"] for r in rows) / len(rows)
        lines.append(f"| {size} | {len(rows)} / {len(PHOTOS) * len(paintings())} | {passed} / {len(rows)} | "
                     f"{worst_c['content_ratio']:.2f} ({Path(worst_c['photo']).stem} x {worst_c['painting']}) | "
                     f"{worst_s['style_ratio']:.3f} ({Path(worst_s['photo']).stem} x {worst_s['painting']}) | "
                     f"{secs:.0f} s |")
    return ["| size | cells measured | pass | worst content ratio (<= 0.6) | worst style ratio (<= 0.2) | "
            "mean job time |", "|---|---|---|---|---|---|"] + lines


def _tile(img: Image.Image, caption: str, fill: str = "black") -> Image.Image:
    framed = Image.new("RGB", (TILE, TILE + 14), "white")
    thumb = img.convert("RGB")
    scale = TILE / max(thumb.size)
    thumb = thumb.resize((max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale))),
                         Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)
    framed.paste(thumb, ((TILE - thumb.width) // 2, (TILE - thumb.height) // 2))
    ImageDraw.Draw(framed).text((2, TILE + 1), caption, fill=fill)
    return framed


def picture(results: dict, out: Path, sizes: list[int]) -> None:
    """Per photo of PICTURE_PHOTOS: a header row (photo, paintings) then one row per size."""
    names = paintings()
    blank = Image.new("RGB", (TILE, TILE), "white")
    rows = []
    for photo in PICTURE_PHOTOS:
        rows.append([_tile(Image.open(ROOT / "data" / "style" / photo), photo)] +
                    [_tile(load_painting(n), n) for n in names])
        for size in sizes:
            row = [_tile(blank, f"{size} px  (content/style)")]
            for name in names:
                r = results.get(key(photo, name, size))
                png = CACHE / f"{key(photo, name, size)}.png"
                if r is None or not png.is_file():
                    row.append(_tile(blank, "not run", "grey"))
                    continue
                caption = f"{r['content_ratio']:.2f}/{r['style_ratio']:.3f} {'ok' if r['passed'] else 'FAIL'}"
                row.append(_tile(Image.open(png), caption, "black" if r["passed"] else "red"))
            rows.append(row)
    sheet = Image.new("RGB", (TILE * len(rows[0]), (TILE + 14) * len(rows)), "white")
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            sheet.paste(cell, (c * TILE, r * (TILE + 14)))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)


def markdown(results: dict, out: Path) -> None:
    sizes = [s for s in SIZES if any(r["size"] == s for r in results.values())]
    devices = sorted({r["device"] for r in results.values()})
    text = ["# Style balance grid", "",
            "Generated by `python -m bench.style_grid` (do not edit by hand). Every job at the default options "
            f"(seed 0) on {', '.join(devices)}; yardstick of `bench/style_yardstick.py` on the returned PNG. "
            "Each cell: content ratio / style ratio; pass = content ratio <= 0.6 (photo kept) and style ratio "
            "<= 0.2 (style arrived). `not run`: not measured (see docs/style.md for why). "
            "Picture: [style-grid.png](style-grid.png).", "", "## Summary", ""] + summary(results) + \
        ["", "## Every cell", ""] + table(results, sizes) + [""]
    out.write_text("\n".join(text))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--photos", nargs="+", default=PHOTOS)
    parser.add_argument("--paintings", nargs="+", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=1, help="processes (one torch thread each on CPU)")
    parser.add_argument("--fresh", action="store_true", help="re-run cells already in the cache")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--picture", type=Path, default=ROOT / "docs" / "style-grid.png")
    parser.add_argument("--markdown", type=Path, default=ROOT / "docs" / "style-balance.md")
    args = parser.parse_args(argv)

    results = load_cache()
    if not args.report_only:
        names = args.paintings or paintings()
        # small sizes first: a time-boxed run measures the whole grid at the small sizes before any large cell
        cells = [(p, n, s, args.device) for s in sorted(args.sizes) for p in args.photos for n in names
                 if args.fresh or key(p, n, s) not in results]
        print(f"{len(cells)} cells to run on {args.device} with {args.workers} worker(s)", flush=True)
        ctx = mp.get_context("spawn")
        with ctx.Pool(args.workers, maxtasksperchild=None) as pool:
            for r in pool.imap_unordered(_run_cell, cells):
                results = {**load_cache(), key(r["photo"], r["painting"], r["size"]): r}
                save_cache(results)
                print(f"{r['photo']:14s} {r['painting']:13s} {r['size']:4d}  content {r['content_ratio']:.3f}  "
                      f"style {r['style_ratio']:.4f}  {'PASS' if r['passed'] else 'FAIL'}  {r['seconds']:.0f} s",
                      flush=True)
    results = load_cache()
    if not results:
        print("nothing measured yet")
        return results
    sizes = [s for s in SIZES if any(r["size"] == s for r in results.values())]
    print("\n".join(table(results, sizes)))
    print("\n".join(summary(results)))
    picture(results, args.picture, sizes)
    markdown(results, args.markdown)
    print(f"wrote {args.picture} and {args.markdown}")
    return results


if __name__ == "__main__":
    main()
