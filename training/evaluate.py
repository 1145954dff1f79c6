"""Re-measure the committed weights on the held-out sets shipped in data/heldout/.

    python -m training.evaluate                 # every model in the manifest
    python -m training.evaluate digits-cnn --update-manifest
    python -m training.evaluate --backend onnxruntime   # the committed ONNX exports, with ONNX Runtime
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch

from models import ARCHITECTURES
from models.sentiment import SentimentLSTM, pad_batch, tokenize
from training import digits, objects
from models.checkpoints import auto_device
from training.common import HELDOUT_DIR, WEIGHTS_DIR, update_manifest
from training.data import load_heldout

BACKENDS = ("torch", "onnxruntime")


class OnnxModel:
    """The entry's ONNX export run by ONNX Runtime (as the server runs it), called like the nn.Module it was
    exported from: the same positional inputs, logits out; anything else (SentimentLSTM.encode) from the module."""

    def __init__(self, module: torch.nn.Module, path: Path):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.module = module
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        feeds = {name: np.ascontiguousarray(x.cpu().numpy()) for name, x in zip(self.input_names, inputs)}
        return torch.from_numpy(self.session.run(None, feeds)[0])

    def __getattr__(self, name: str):
        return getattr(self.module, name)


def load_model(entry: dict, weights_dir: Path, device: torch.device, backend: str = "torch"):
    model = ARCHITECTURES[entry["architecture"]](**entry["config"])
    model.load_state_dict(torch.load(weights_dir / entry["file"], map_location="cpu", weights_only=True))
    if backend == "onnxruntime":
        if "onnx" not in entry:
            raise ValueError(f"{entry['name']} has no ONNX export; run python -m app.serving.onnx_export")
        return OnnxModel(model.eval(), weights_dir / entry["onnx"]["file"])
    return model.to(device).eval()


@torch.inference_mode()
def image_accuracy(model, x: torch.Tensor, y: np.ndarray, device, batch_size: int = 500) -> float:
    predictions = [model(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    return float((torch.cat(predictions).numpy() == y).mean())


@torch.inference_mode()
def text_accuracy(model: SentimentLSTM, texts, y: np.ndarray, device, batch_size: int = 256) -> float:
    predictions = []
    for i in range(0, len(texts), batch_size):
        ids, lengths = pad_batch([model.encode(tokenize(str(t))) for t in texts[i:i + batch_size]])
        predictions.append(model(ids.to(device), lengths).argmax(1).cpu())
    return float((torch.cat(predictions).numpy() == y).mean())


def measure(entry: dict, weights_dir: Path = WEIGHTS_DIR, heldout_dir: Path = HELDOUT_DIR,
            device: torch.device = torch.device("cpu"), backend: str = "torch") -> dict:
    """Accuracy of one manifest entry on its held-out set, in the manifest's metrics format; backend
    onnxruntime runs the entry's ONNX export (on the CPU) instead of the state_dict."""
    model = load_model(entry, weights_dir, device, backend)
    if entry["task"] == "digits":
        data = load_heldout(heldout_dir, "mnist-test")
        accuracy = image_accuracy(model, digits.to_tensor(data["x"], "cpu"), data["y"], device)
    elif entry["task"] == "objects":
        data = load_heldout(heldout_dir, "cifar-test")
        accuracy = image_accuracy(model, objects.to_tensor(data["x"], "cpu"), data["y"], device)
    elif entry["task"] == "sentiment":
        data = load_heldout(heldout_dir, "sst2-dev")
        accuracy = text_accuracy(model, data["texts"], data["y"], device)
    else:
        raise ValueError(f"no held-out set for task {entry['task']!r}")
    return {**entry["metrics"], "size": len(data["y"]), "accuracy": round(accuracy, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="model names (default: all)")
    parser.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--heldout-dir", type=Path, default=HELDOUT_DIR)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backend", choices=BACKENDS, default="torch",
                        help="onnxruntime: the committed ONNX exports (CPU), as INFERENCE_BACKEND=onnxruntime serves")
    parser.add_argument("--update-manifest", action="store_true", help="write the measured metrics back")
    args = parser.parse_args()
    device = auto_device("cpu" if args.backend == "onnxruntime" else args.device)
    manifest = json.loads((args.weights_dir / "manifest.json").read_text())
    for name, entry in manifest["models"].items():
        if args.models and name not in args.models:
            continue
        metrics = measure({**entry, "name": name}, args.weights_dir, args.heldout_dir, device, args.backend)
        print(f"{name:16s} {metrics['dataset']} {metrics['split']} ({metrics['size']}): "
              f"accuracy {metrics['accuracy']:.4f} (manifest {entry['metrics']['accuracy']:.4f}) on {device}, "
              f"{args.backend}")
        if args.update_manifest:
            update_manifest(args.weights_dir, {**entry, "metrics": metrics})


if __name__ == "__main__":
    main()
