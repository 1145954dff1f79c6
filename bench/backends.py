"""Forward passes per second, PyTorch against ONNX Runtime, in one process (no HTTP, no decoding).

    python -m bench.backends                       # every model of weights/manifest.json, batch 1 and 32
    python -m bench.backends --sizes 1 8 32 --rounds 7 --models objects-cnn

Each model is set up as the server sets it up (its handler, the committed ONNX export, ONNX Runtime with the
server's session options and threads) and fed the fixed held-out check inputs stored next to the export
(weights/<model>.check.npz), repeated to the batch size. The backends alternate round by round, so a busy neighbour
slows both alike; a round is about --round-s seconds of calls; the best round counts (items/s), and the median
round is printed too.
"""
import argparse
import statistics
import time
from pathlib import Path

import torch

from app.serving.backends import OnnxRunner, TorchRunner, check_inputs, onnx_threads, rows
from app.core.config import Settings
from app.serving.loading import read_manifest
from app.serving.registry import discover_handlers
from training.common import WEIGHTS_DIR


def runners_of(name: str, entry: dict, weights_dir: Path, settings: Settings):
    handler = discover_handlers()[entry["architecture"]](entry, weights_dir, settings)
    handler.setup(torch.device("cpu"))
    onnx = entry["onnx"]
    runners = {"torch": TorchRunner(handler.model, handler.device, handler.cpu_inputs),
               "onnxruntime": OnnxRunner(weights_dir / onnx["file"], onnx_threads(settings))}
    return runners, check_inputs(handler, weights_dir / onnx["check_file"])


def measure(runners: dict, batch: dict, size: int, rounds: int, round_s: float) -> dict[str, tuple[float, float]]:
    """(best, median) items/s per runner."""
    calls = {}
    for name, runner in runners.items():  # warm up, and size a round
        runner(batch)
        started = time.perf_counter()
        runner(batch)
        calls[name] = max(1, int(round_s / max(time.perf_counter() - started, 1e-6)))
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, runner in runners.items():
            started = time.perf_counter()
            for _ in range(calls[name]):
                runner(batch)
            rates[name].append(size * calls[name] / (time.perf_counter() - started))
    return {name: (max(values), statistics.median(values)) for name, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--models", nargs="*", help="model names (default: every model with an ONNX export)")
    parser.add_argument("--sizes", nargs="*", type=int, default=[1, 32])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--round-s", type=float, default=0.2, help="seconds of calls per round and backend")
    parser.add_argument("--threads", type=int, default=0, help="torch and ONNX Runtime threads (0: as the server)")
    args = parser.parse_args()
    settings = Settings(weights_dir=args.weights_dir, inference_backend="torch", torch_threads=args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    entries = read_manifest(args.weights_dir)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), ONNX Runtime "
          f"{__import__('onnxruntime').__version__} ({onnx_threads(settings)} intra-op threads), CPU")
    print("| model | batch | torch items/s | onnxruntime items/s | onnxruntime / torch | (medians) |")
    print("|---|---|---|---|---|---|")
    for name, entry in entries.items():
        if (args.models and name not in args.models) or "onnx" not in entry:
            continue
        runners, inputs = runners_of(name, entry, args.weights_dir, settings)
        for size in args.sizes:
            result = measure(runners, rows(inputs, size), size, args.rounds, args.round_s)
            (t_best, t_med), (o_best, o_med) = result["torch"], result["onnxruntime"]
            print(f"| {name} | {size} | {t_best:,.0f} | {o_best:,.0f} | {o_best / t_best:.2f}x | "
                  f"{t_med:,.0f} / {o_med:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
