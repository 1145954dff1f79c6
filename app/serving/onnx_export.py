"""Export the served classifiers to ONNX, for ONNX Runtime (INFERENCE_BACKEND=onnxruntime, or auto on the CPU).

    python -m app.serving.onnx_export                        # every model in weights/manifest.json
    python -m app.serving.onnx_export --models digits-cnn    # one model (after retraining it)

For each model, next to its checkpoint:
    <model>.onnx        torch.onnx.export of the committed state_dict (TorchScript exporter, opset 17); the batch
                        axis is variable, and for sentiment the sequence axis too (padded ids + lengths in, logits
                        out: ONNX's LSTM takes the lengths as sequence_lens, as packing does in PyTorch)
    <model>.check.npz   fixed held-out inputs (real test-set samples from data/heldout/, as network inputs): the
                        server runs PyTorch and ONNX Runtime on them at startup and refuses a model whose logits
                        differ by more than 1e-4
and the entry's "onnx" block in manifest.json: both files' sha256 (verified at startup like the checkpoints) and the
sha256 of the state_dict that was exported (a retrained checkpoint with a stale export is refused).

The network inputs come from the server's own handler (`collate`), so the export takes exactly what it serves.
The dynamo exporter (torch.export) is not used: it cannot trace pack_padded_sequence with a variable batch.
"""
import argparse
import json
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from app.core.config import Settings
from app.serving.backends import MAX_ABS_DIFF, OnnxRunner, TorchRunner, max_abs_diff
from app.serving.handlers.base import ModelHandler
from app.serving.registry import discover_handlers
from models.checkpoints import sha256_of, update_manifest
from preprocessing.digits import normalise_mnist_uint8
from preprocessing.objects import normalise_cifar_uint8

REPO_ROOT = Path(__file__).resolve().parents[2]
WEIGHTS_DIR = REPO_ROOT / "weights"
HELDOUT_DIR = REPO_ROOT / "data" / "heldout"  # the held-out sets shipped with the repo (training.data reads them too)

OPSET = 17
CHECK_ITEMS = 8
EXPORTER = "torch.onnx.export (TorchScript exporter, dynamo=False)"


def load_heldout(heldout_dir: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(heldout_dir / f"{name}.npz") as npz:
        return {k: npz[k] for k in npz.files}


def check_items(handler: ModelHandler, heldout_dir: Path) -> tuple[list, str]:
    """CHECK_ITEMS decoded held-out inputs for the handler's task, and where they come from."""
    if handler.task in ("digits", "objects"):
        name, to_tensor = ("mnist-test", normalise_mnist_uint8) if handler.task == "digits" else \
            ("cifar-test", normalise_cifar_uint8)
        x = load_heldout(heldout_dir, name)["x"][:CHECK_ITEMS]
        return list(to_tensor(x)), f"{name} images 0..{CHECK_ITEMS - 1}"
    if handler.task == "sentiment":
        texts = [str(t) for t in load_heldout(heldout_dir, "sst2-dev")["texts"]]
        by_length = sorted(range(len(texts)), key=lambda i: (len(texts[i].split()), i))
        # The shortest, the longest and evenly spaced lengths between: padding is exercised in every row.
        picked = [by_length[round(k * (len(texts) - 1) / (CHECK_ITEMS - 1))] for k in range(CHECK_ITEMS)]
        return ([handler.decode_request(texts[i]) for i in picked],
                f"sst2-dev sentences {picked} (shortest to longest)")
    raise ValueError(f"no held-out set for task {handler.task!r}")


@contextmanager
def without_extra_state(model: nn.Module):
    """The TorchScript exporter takes every state_dict value for a tensor; SentimentLSTM's extra state (its
    vocabulary) is not one, and the graph needs none of it: hide it while exporting."""
    classes = {type(m) for m in model.modules() if type(m).get_extra_state is not nn.Module.get_extra_state}
    saved = {cls: cls.__dict__.get("get_extra_state") for cls in classes}
    for cls in classes:
        cls.get_extra_state = nn.Module.get_extra_state
    try:
        yield
    finally:
        for cls, method in saved.items():
            if method is None:
                del cls.get_extra_state
            else:
                cls.get_extra_state = method


def export_model(entry: dict, weights_dir: Path = WEIGHTS_DIR, heldout_dir: Path = HELDOUT_DIR) -> dict:
    """Export one manifest entry, verify it, write its files and its manifest "onnx" block; returns the block."""
    handler_cls = discover_handlers()[entry["architecture"]]
    handler = handler_cls({**entry, "config": entry.get("config", {})}, weights_dir,
                          Settings(weights_dir=weights_dir, inference_backend="torch"))
    handler.setup(torch.device("cpu"))
    items, source = check_items(handler, heldout_dir)
    inputs = handler.collate(items)
    names = list(handler.onnx_dynamic_axes)
    if list(inputs) != names:
        raise RuntimeError(f"{handler_cls.__name__}.collate gives {list(inputs)}, onnx_dynamic_axes lists {names}")

    onnx_path = weights_dir / f"{entry['name']}.onnx"
    check_path = weights_dir / f"{entry['name']}.check.npz"
    tmp = onnx_path.with_suffix(".onnx.tmp")
    with without_extra_state(handler.model), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and shape-inference notices
        torch.onnx.export(handler.model, tuple(inputs.values()), str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=names, output_names=["logits"],
                          dynamic_axes={**handler.onnx_dynamic_axes, "logits": {0: "batch"}})
    diff = max_abs_diff(TorchRunner(handler.model, handler.device), OnnxRunner(tmp, threads=1), inputs)
    if not diff <= MAX_ABS_DIFF:
        tmp.unlink()
        raise RuntimeError(f"{entry['name']}: the export differs from PyTorch by {diff:.3g} (> {MAX_ABS_DIFF:g})")
    tmp.replace(onnx_path)
    np.savez_compressed(check_path, **{name: value.numpy() for name, value in inputs.items()})

    import onnxruntime
    block = {
        "file": onnx_path.name, "sha256": sha256_of(onnx_path),
        "check_file": check_path.name, "check_sha256": sha256_of(check_path), "check_inputs": source,
        "weights_sha256": entry["sha256"], "opset": OPSET, "inputs": handler.onnx_dynamic_axes,
        "exporter": EXPORTER, "torch_version": torch.__version__, "onnxruntime_version": onnxruntime.__version__,
        "max_abs_diff": float(f"{diff:.3g}"),
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    update_manifest(weights_dir, {**entry, "onnx": block})
    return block


def export_all(weights_dir: Path = WEIGHTS_DIR, heldout_dir: Path = HELDOUT_DIR,
               models: list[str] | None = None, quiet: bool = False) -> dict[str, dict]:
    manifest = json.loads((weights_dir / "manifest.json").read_text())
    unknown = set(models or []) - set(manifest["models"])
    if unknown:
        raise SystemExit(f"not in {weights_dir / 'manifest.json'}: {', '.join(sorted(unknown))}")
    blocks = {}
    for name, entry in manifest["models"].items():
        if models and name not in models:
            continue
        blocks[name] = block = export_model({**entry, "name": name}, weights_dir, heldout_dir)
        if not quiet:
            size = (weights_dir / block["file"]).stat().st_size / 1e6
            print(f"{name:16s} -> {block['file']} ({size:.2f} MB, sha256 {block['sha256'][:12]}..), "
                  f"largest logit difference to PyTorch {block['max_abs_diff']:.2g} on {block['check_inputs']}")
    return blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", help="model names (default: all)")
    parser.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--heldout-dir", type=Path, default=HELDOUT_DIR)
    args = parser.parse_args()
    export_all(args.weights_dir, args.heldout_dir, args.models)


if __name__ == "__main__":
    main()
