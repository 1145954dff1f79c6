"""The decoder's training images (training/decoder.py): where they come from and under which licence (SOURCES,
SOURCE_NOTES, recorded in the manifest), loading them (load_training_set) and the random crops (CropSampler)."""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from training.common import REPO_ROOT, progress

HELDOUT = ("chelsea", "coffee")  # never trained on: the reconstruction PSNR is measured on them
SOURCES = ("photos", "paintings", "cifar", "wallpapers")
PLASMA_DIR = Path("/usr/share/wallpapers")
GNOME_DIR = Path("/usr/share/backgrounds/gnome")
PRELOAD_LONGEST = 1024  # every training image is kept at most this large (crops are taken at random scales below)
RASTER = (".png", ".jpg", ".jpeg", ".webp")

SOURCE_NOTES = {
    "photos": {"what": "the shipped content photos (data/images/content) except the held-out ones",
               "licence": "astronaut: public domain (NASA); rocket: public domain (SpaceX); chelsea and coffee "
                          "(held out, never trained on): CC0 (scikit-image data)"},
    "paintings": {"what": "the four preset paintings (data/style)",
                  "licence": "public domain (Van Gogh 1889, Munch 1893, Turner 1805, Picabia 1913)"},
    "cifar": {"what": "mosaics of 4x4 32x32 photos from the CIFAR-10 subset's training images",
              "licence": "CIFAR-10 (Krizhevsky, Nair & Hinton 2009): no explicit licence; cite the technical "
                         "report"},
    "wallpapers": {"what": "Debian packages plasma-workspace-wallpapers (4:5.27.5-2) and gnome-backgrounds "
                           "(43.1-1), raster images only (the SVGs and the plain-colour vnc-* are skipped), the "
                           "largest file of each plasma wallpaper",
                   "licence": "plasma-workspace-wallpapers: GPL-2+ for the package (debian/copyright); each "
                              "wallpaper's metadata says LGPL-3 or CC-BY-SA-4.0 (recorded per file below); "
                              "gnome-backgrounds: package GPL-2+, the images its AUTHORS lists (adwaita, grid, "
                              "pixels, symbolics, wood, ...) CC BY-SA 3.0 (Jakub Steiner), licorice and truchet "
                              "not listed there (the package's GPL-2+), oceans.svg CC BY 4.0 (not used: SVG)"},
}
WEIGHTS_LICENCE_NOTE = (
    "All sources allow redistribution and derivative works. Whether trained weights are a derivative work of their "
    "training images is legally unsettled; if they are, the wallpapers' share-alike terms (CC BY-SA 3.0 and 4.0, "
    "LGPL-3, GPL-2+) reach these weights: redistribute them with this attribution list, under share-alike terms "
    "(CC BY-SA 3.0 lets an adaptation use CC BY-SA 4.0, which is one-way compatible with GPL-3; LGPL-3 and GPL-2+ "
    "allow GPL-3, so GPL-3.0-or-later is the one licence that plausibly covers the mix; not legal advice). Weights "
    "free of those terms: train with --sources photos,paintings,cifar.")
GNOME_AUTHORS = ("adwaita", "blobs", "brush-strokes", "drool", "field", "frosty", "grid", "pixels", "symbolic",
                 "wood")  # the images gnome-backgrounds' AUTHORS credits to Jakub Steiner, CC BY-SA 3.0


@dataclass
class TrainingImage:
    name: str
    source: str
    pixels: torch.Tensor  # (3, H, W) uint8
    licence: str = ""


@dataclass
class TrainingSet:
    images: list[TrainingImage] = field(default_factory=list)
    cifar: np.ndarray | None = None  # (N, 32, 32, 3) uint8

    def describe(self) -> dict:
        counts: dict[str, int] = {}
        for image in self.images:
            counts[image.source] = counts.get(image.source, 0) + 1
        if self.cifar is not None:
            counts["cifar"] = int(len(self.cifar))
        return counts


def _load(path: Path) -> torch.Tensor:
    with Image.open(path) as img:
        img.draft("RGB", (PRELOAD_LONGEST, PRELOAD_LONGEST))  # JPEG: decode at a reduced scale directly
        img = img.convert("RGB")
        scale = PRELOAD_LONGEST / max(img.size)
        if scale < 1:
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                             Image.Resampling.LANCZOS, reducing_gap=3.0)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def photo_dirs(data_dir: Path) -> tuple[Path, Path]:
    content = data_dir / "images" / "content"
    style = data_dir / "images" / "style"
    local = REPO_ROOT / "data" / "style"  # the repo's own copies (photos and paintings in one folder)
    return (content if content.is_dir() else local), (style if style.is_dir() else local)


def plasma_wallpapers() -> list[tuple[Path, str]]:
    """(largest raster image, licence from metadata) of every plasma wallpaper package."""
    found = []
    for folder in sorted(PLASMA_DIR.glob("*/contents")) if PLASMA_DIR.is_dir() else []:
        files = [p for p in folder.glob("images*/*") if p.suffix.lower() in RASTER]
        if not files:
            continue
        biggest = max(files, key=lambda p: p.stat().st_size)
        found.append((biggest, _plasma_licence(folder.parent)))
    return found


def _plasma_licence(folder: Path) -> str:
    meta = folder / "metadata.json"
    try:
        if meta.is_file():
            plugin = json.loads(meta.read_text(encoding="utf-8")).get("KPlugin", {})
            authors = ", ".join(a.get("Name", "") for a in plugin.get("Authors", []))
            return f"{plugin.get('License', '?')} ({authors})"
        desktop = folder / "metadata.desktop"
        if desktop.is_file():
            fields = dict(line.split("=", 1) for line in desktop.read_text(encoding="utf-8").splitlines()
                          if "=" in line)
            return f"{fields.get('X-KDE-PluginInfo-License', '?')} ({fields.get('X-KDE-PluginInfo-Author', '?')})"
    except (OSError, ValueError):
        pass
    return "GPL-2+ (package)"


def gnome_backgrounds() -> list[tuple[Path, str]]:
    if not GNOME_DIR.is_dir():
        return []
    return [(p, "CC BY-SA 3.0 (Jakub Steiner)" if p.name.lower().startswith(GNOME_AUTHORS)
             else "GPL-2+ (the package's; not listed in its AUTHORS)")
            for p in sorted(GNOME_DIR.iterdir())
            if p.suffix.lower() in RASTER and p.stat().st_size > 10_000]  # vnc-*: a plain colour


def load_training_set(sources: list[str], data_dir: Path, limit: int = 0, quiet: bool = False) -> TrainingSet:
    """The training images of each source; SystemExit with what to do when a source asked for is missing."""
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        sys.exit(f"unknown source(s) {', '.join(unknown)}; choose from {', '.join(SOURCES)}")
    data = TrainingSet()
    content_dir, style_dir = photo_dirs(data_dir)
    if "photos" in sources:
        names = ("astronaut.png", "rocket.jpg")
        paths = [content_dir / n for n in names if (content_dir / n).is_file()]
        if not paths:
            sys.exit(f"source 'photos': none of {', '.join(names)} in {content_dir}; pass --data-dir (the folder "
                     "holding images/content) or leave 'photos' out of --sources")
        data.images += [TrainingImage(p.stem, "photos", _load(p), "public domain") for p in paths]
    if "paintings" in sources:
        names = ("starry_night.jpg", "the_scream.jpg", "shipwreck.jpg", "udnie.jpg")
        paths = [style_dir / n for n in names if (style_dir / n).is_file()]
        if not paths:
            sys.exit(f"source 'paintings': none of {', '.join(names)} in {style_dir}; pass --data-dir or leave "
                     "'paintings' out of --sources")
        data.images += [TrainingImage(p.stem, "paintings", _load(p), "public domain") for p in paths]
    if "wallpapers" in sources:
        files = plasma_wallpapers() + gnome_backgrounds()
        if not files:
            sys.exit(f"source 'wallpapers': no images in {PLASMA_DIR} or {GNOME_DIR}; install them with "
                     "`apt-get install plasma-workspace-wallpapers gnome-backgrounds`, or leave 'wallpapers' out "
                     "of --sources")
        if limit:
            files = files[:limit]
        for path, licence in progress(files, "loading wallpapers", quiet):
            data.images.append(TrainingImage(str(path), "wallpapers", _load(path), licence))
    if "cifar" in sources:
        npz = data_dir / "cifar-10-subset" / "cifar10_subset.npz"
        if not npz.is_file():
            sys.exit(f"source 'cifar': {npz} not found; pass --data-dir (the folder holding cifar-10-subset) or "
                     "leave 'cifar' out of --sources")
        with np.load(npz) as f:
            data.cifar = f["x_train"][: limit * 16] if limit else f["x_train"]
    for image in data.images:  # never train on a held-out photo, whichever source it came from
        if any(h in Path(image.name).stem.lower() for h in HELDOUT):
            sys.exit(f"{image.name}: a held-out photo is among the training images")
    if not data.images and data.cifar is None:
        sys.exit("no training images")
    return data


class CropSampler:
    """Random crops of crop x crop px: from an image at a random scale (between the preloaded size and the scale
    where the crop covers the short side) or a 4x4 mosaic of CIFAR photos; random horizontal flip."""

    def __init__(self, data: TrainingSet, crop: int, cifar_share: float, generator: torch.Generator):
        self.data, self.crop, self.g = data, crop, generator
        self.cifar_share = cifar_share if data.cifar is not None else 0.0
        if not data.images:
            self.cifar_share = 1.0

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.g))

    def _int(self, n: int) -> int:
        return int(torch.randint(0, n, (), generator=self.g))

    def one(self) -> torch.Tensor:
        c = self.crop
        if self._rand() < self.cifar_share:
            tiles = c // 32
            idx = torch.randint(0, len(self.data.cifar), (tiles * tiles,), generator=self.g).numpy()
            t = torch.from_numpy(self.data.cifar[idx]).float().div(255)  # (n, 32, 32, 3)
            t = t.view(tiles, tiles, 32, 32, 3).permute(4, 0, 2, 1, 3).reshape(3, tiles * 32, tiles * 32)
            out = F.interpolate(t[None], size=(c, c), mode="bilinear", antialias=True)[0] if tiles * 32 != c else t
        else:
            img = self.data.images[self._int(len(self.data.images))].pixels
            _, h, w = img.shape
            smallest = c / min(h, w)  # the scale at which the crop spans the short side
            scale = math.exp(math.log(min(1.0, smallest)) * self._rand()) if smallest < 1 else smallest
            side = min(h, w, max(c // 2, round(c / scale)))
            y, x = self._int(h - side + 1), self._int(w - side + 1)
            patch = img[:, y:y + side, x:x + side].float().div(255)
            out = patch if side == c else F.interpolate(patch[None], size=(c, c), mode="bilinear",
                                                        antialias=side > c, align_corners=False)[0]
        if self._rand() < 0.5:
            out = out.flip(2)
        return out.clamp(0, 1)

    def batch(self, n: int) -> torch.Tensor:
        return torch.stack([self.one() for _ in range(n)])


