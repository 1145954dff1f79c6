"""Startup checks: device resolution, the weights manifest and sha256 verification.

Everything here raises StartupError with a message that names the setting or file at fault,
so a misconfigured server refuses to start instead of serving wrong answers.
"""
import json
import re
from pathlib import Path

import torch

from models.checkpoints import auto_device, sha256_of

MANIFEST_NAME = "manifest.json"
REQUIRED_ENTRY_FIELDS = ("task", "architecture", "file", "sha256", "classes")
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class StartupError(RuntimeError):
    """The server cannot start with this configuration; the message says what to fix."""


def resolve_device(spec: str) -> torch.device:
    """auto | cpu | cuda | cuda:N -> a usable torch.device."""
    name = spec.strip().lower()
    if not _DEVICE_PATTERN.match(name):
        raise StartupError(f"DEVICE={spec!r} is not valid; use auto, cpu, cuda or cuda:N")
    device = auto_device(name)
    if device.type == "cuda":
        _check_cuda(spec, device)
    return device


def _check_cuda(spec: str, device: torch.device) -> None:
    if not torch.cuda.is_available():
        raise StartupError(f"DEVICE={spec} but CUDA is not available on this machine; use DEVICE=cpu or auto")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise StartupError(f"DEVICE={spec} but only {count} CUDA device(s) are visible (cuda:0..cuda:{count - 1})")


def read_manifest(weights_dir: Path) -> dict[str, dict]:
    """The manifest's models by name, each entry completed with its `name`; validated for shape only."""
    path = weights_dir / MANIFEST_NAME
    if not path.is_file():
        raise StartupError(f"{path}: manifest not found; train the models (make train) or set WEIGHTS_DIR")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StartupError(f"{path}: unreadable manifest ({exc})") from exc
    models = manifest.get("models") if isinstance(manifest, dict) else None
    if not isinstance(models, dict) or not models:
        raise StartupError(f"{path}: expected an object {{\"models\": {{name: entry, ...}}}} with at least one model")
    return {name: _checked_entry(path, name, entry) for name, entry in models.items()}


def _checked_entry(manifest_path: Path, name: str, entry: object) -> dict:
    where = f"{manifest_path}: model '{name}'"
    if not isinstance(entry, dict):
        raise StartupError(f"{where}: entry must be an object")
    missing = [field for field in REQUIRED_ENTRY_FIELDS if field not in entry]
    if missing:
        raise StartupError(f"{where}: missing field(s) {', '.join(missing)}")
    classes = entry["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise StartupError(f"{where}: 'classes' must be a non-empty list of strings")
    if not isinstance(entry.get("config", {}), dict):
        raise StartupError(f"{where}: 'config' must be an object of constructor arguments")
    if entry.get("name", name) != name:
        raise StartupError(f"{where}: its 'name' field says {entry['name']!r}")
    return {**entry, "name": name, "config": entry.get("config", {}), "default": bool(entry.get("default", False))}


ONNX_FIELDS = ("file", "sha256", "check_file", "check_sha256", "weights_sha256")
ONNX_FIX = "re-export it (python -m app.serving.onnx_export --models {name}) or restore the file"


def listed_files(entry: dict) -> list[tuple[str, str, str]]:
    """(file, sha256, how to fix it) for every file a manifest entry lists: its checkpoint, and its ONNX export
    and fixed check inputs when it has an "onnx" block (written by python -m app.serving.onnx_export)."""
    files = [(entry["file"], entry["sha256"], "re-train or restore the file")]
    onnx = entry.get("onnx")
    if onnx is None:
        return files
    if not isinstance(onnx, dict) or not all(isinstance(onnx.get(f), str) for f in ONNX_FIELDS):
        raise StartupError(f"manifest: model '{entry['name']}': 'onnx' must be an object with the strings "
                           f"{', '.join(ONNX_FIELDS)}; {ONNX_FIX.format(name=entry['name'])}")
    fix = ONNX_FIX.format(name=entry["name"])
    return [*files, (onnx["file"], onnx["sha256"], fix), (onnx["check_file"], onnx["check_sha256"], fix)]


def verify_weights(weights_dir: Path, entries: dict[str, dict]) -> None:
    """Every listed file exists and matches its sha256."""
    for entry in entries.values():
        for file, sha256, fix in listed_files(entry):
            path = weights_dir / file
            if not path.is_file():
                raise StartupError(f"{path}: file listed in the manifest for '{entry['name']}' is missing; {fix}")
            actual = sha256_of(path)
            expected = str(sha256).lower()
            if actual != expected:
                raise StartupError(f"{path}: sha256 mismatch (expected {expected[:12]}.., got {actual[:12]}..) for "
                                   f"'{entry['name']}'; {fix}")


def verify_assets(weights_dir: Path) -> None:
    """Files the manifest lists under "assets" (the style-transfer VGG weights) exist and match their sha256."""
    manifest = json.loads((weights_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    assets = manifest.get("assets") or {}
    verify_weights(weights_dir, {name: {**entry, "name": name} for name, entry in assets.items()})


def load_state_dict(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for bad files
        raise StartupError(f"{path}: cannot be loaded as a state_dict ({exc})") from exc
