"""What training writes and serving reads, done one way for both: checkpoint checksums, the manifest's entries and
the `auto` device."""
import hashlib
import json
from pathlib import Path

import torch


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks (the manifest records it; the server verifies it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def auto_device(name: str) -> torch.device:
    """`auto` is CUDA when there is one, else the CPU; any other name is taken as torch names it."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def update_manifest(weights_dir: Path, entry: dict) -> None:
    """Insert or replace one model's entry; the write is atomic so a crash never leaves half a file."""
    manifest_path = weights_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"models": {}}
    if entry.get("default"):
        for other in manifest["models"].values():
            if other["task"] == entry["task"] and other["name"] != entry["name"]:
                other["default"] = False
    manifest["models"][entry["name"]] = entry
    manifest["models"] = dict(sorted(manifest["models"].items()))
    tmp = manifest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(manifest_path)
