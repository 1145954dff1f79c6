"""Render the README's style gallery: content photos x preset paintings, with the default job settings.

    python -m bench.style_gallery --out docs/style-gallery.png
"""
import argparse
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from app.style.engine import StyleEngine
from app.style.options import StyleParams
from app.style.presets import list_presets, preset_path

ROOT = Path(__file__).resolve().parents[1]
CONTENTS = ["chelsea.png", "astronaut.png"]
TILE = 200


def tile(image: Image.Image, caption: str) -> Image.Image:
    framed = Image.new("RGB", (TILE, TILE + 18), "white")
    thumb = image.convert("RGB")
    thumb.thumbnail((TILE, TILE))
    framed.paste(thumb, ((TILE - thumb.width) // 2, (TILE - thumb.height) // 2))
    ImageDraw.Draw(framed).text((4, TILE + 3), caption, fill="black")
    return framed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=None, help="default: the job default for the device")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "style-gallery.png")
    args = parser.parse_args()
    engine = StyleEngine(ROOT / "weights" / "vgg19_features_0-16.pth", args.device)
    presets = [p["name"] for p in list_presets()]
    rows = []
    for content_name in CONTENTS:
        content = Image.open(ROOT / "data" / "style" / content_name)
        row = [tile(content, content_name)]
        for name in presets:
            start = time.perf_counter()
            result = engine.run(content, [Image.open(preset_path(name))], StyleParams(size=args.size, seed=0))
            seconds = time.perf_counter() - start
            print(f"{content_name} x {name}: {result.size[0]}x{result.size[1]} in {seconds:.1f} s on {args.device}",
                  flush=True)
            row.append(tile(result, f"{name} ({seconds:.1f} s)"))
        rows.append(row)
    header = [tile(Image.new("RGB", (TILE, TILE), "white"), "")] + [tile(Image.open(preset_path(n)), n) for n in presets]
    grid = [header] + rows
    sheet = Image.new("RGB", (TILE * len(header), (TILE + 18) * len(grid)), "white")
    for r, row in enumerate(grid):
        for c, cell in enumerate(row):
            sheet.paste(cell, (c * TILE, r * (TILE + 18)))
    sheet.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
