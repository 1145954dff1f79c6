"""Inference backends: what runs a classifier's forward pass (INFERENCE_BACKEND=auto|torch|onnxruntime).

A `Runner` takes the network's named inputs (CPU tensors, as `ModelHandler.collate` makes them) and returns the
logits (N, C) as a CPU or device tensor. `TorchRunner` runs the nn.Module on the handler's device; `OnnxRunner` runs
the committed ONNX export (`weights/<model>.onnx`, written by `python -m app.serving.onnx_export`) with ONNX Runtime's
CPU execution provider. `choose_runner` is the seam the handlers call from `setup`:

    torch         TorchRunner, ONNX files never opened (onnxruntime not even imported)
    onnxruntime   OnnxRunner for every model (CPU only; a model without an export is refused at start)
    auto          on CUDA: TorchRunner. On the CPU: OnnxRunner where the model has an export and ONNX Runtime is
                  measured faster here and now (batch 1 and BATCH_MAX_SIZE), TorchRunner otherwise

Whenever an export is opened it is first run side by side with PyTorch on the fixed held-out inputs stored next to
it (`weights/<model>.check.npz`): a largest absolute logit difference over MAX_ABS_DIFF refuses the model
(StartupError naming it), so a stale or wrong export can never serve.
"""
from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from app.core.config import usable_cpus
from app.serving.loading import StartupError

if TYPE_CHECKING:
    from app.core.config import Settings
    from app.serving.handlers.base import ModelHandler

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime")
MAX_ABS_DIFF = 1e-4  # largest absolute logit difference allowed between ONNX Runtime and PyTorch
TIMING_BUDGET_S = 0.1  # auto: seconds of timing per model and batch size, both backends together (>= 1 call each)
TIMING_MAX_CALLS = 20  # per backend and batch size


class Runner(ABC):
    backend: ClassVar[str]

    @abstractmethod
    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (N, C) for the network's named inputs (CPU tensors)."""


class TorchRunner(Runner):
    backend = "torch"

    def __init__(self, model: torch.nn.Module, device: torch.device, cpu_inputs: frozenset[str] = frozenset()):
        self.model = model
        self.device = device
        self.cpu_inputs = cpu_inputs  # inputs the network wants on the CPU (sentiment's lengths, for packing)

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        moved = {name: value if name in self.cpu_inputs else value.to(self.device, non_blocking=True)
                 for name, value in inputs.items()}
        with torch.inference_mode():
            return self.model(**moved)


class OnnxRunner(Runner):
    """One ONNX Runtime session on the CPU. `run()` releases the GIL, so the batcher's predict thread leaves the
    event loop free while it computes."""

    backend = "onnxruntime"

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort  # only when an export is used: INFERENCE_BACKEND=torch never imports it

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: the exporter's graphs draw harmless warnings
        # Idle threads sleep instead of spinning: the CPU is shared with the event loop, image decoding, the other
        # models' batchers and style workers, which a spinning pool would starve (and it costs no measurable time).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.threads = threads

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        feeds = {name: np.ascontiguousarray(inputs[name].numpy()) for name in self.input_names}
        (logits,) = self.session.run(None, feeds)
        return torch.from_numpy(logits)


def onnx_threads(settings: Settings) -> int:
    """ONNX Runtime's intra-op threads: TORCH_THREADS when set, else the CPUs this process may run on."""
    return settings.torch_threads if settings.torch_threads > 0 else usable_cpus()


def requested_backend(settings: Settings) -> str:
    return settings.inference_backend.strip().lower()


def verify_backend(entries: dict[str, dict], settings: Settings, device: torch.device) -> None:
    """What can be refused before any weights load: onnxruntime on CUDA, a model without an export, an export of
    other weights (the state_dict was retrained or replaced after `python -m app.serving.onnx_export`)."""
    backend = requested_backend(settings)
    if backend == "torch" or device.type != "cpu":
        if backend == "onnxruntime":
            raise StartupError(f"INFERENCE_BACKEND=onnxruntime runs on the CPU only, but DEVICE resolved to "
                               f"{device}; set DEVICE=cpu, or INFERENCE_BACKEND=auto (torch on CUDA)")
        return
    for name, entry in entries.items():
        onnx = entry.get("onnx")
        if onnx is None:
            if backend == "onnxruntime":
                raise StartupError(f"INFERENCE_BACKEND=onnxruntime but model '{name}' has no ONNX export in the "
                                   f"manifest; run python -m app.serving.onnx_export --models {name}")
            continue
        if onnx["weights_sha256"] != entry["sha256"]:
            raise StartupError(f"model '{name}': {onnx['file']} was exported from other weights (sha256 "
                               f"{onnx['weights_sha256'][:12]}.., the checkpoint is {entry['sha256'][:12]}..); "
                               f"run python -m app.serving.onnx_export --models {name}")


def choose_runner(handler: ModelHandler, device: torch.device) -> tuple[Runner, dict]:
    """The runner `handler` predicts with, and what GET /v1/models says about it (`inference`)."""
    settings = handler.settings
    backend = requested_backend(settings)
    torch_runner = TorchRunner(handler.model, device, handler.cpu_inputs)
    info = {"requested": backend}
    if backend == "torch":
        return torch_runner, {**info, "backend": "torch", "reason": "INFERENCE_BACKEND=torch"}
    if device.type != "cpu":
        return torch_runner, {**info, "backend": "torch", "reason": f"{device.type} stays on PyTorch"}
    onnx = handler.entry.get("onnx")
    if onnx is None:
        return torch_runner, {**info, "backend": "torch", "reason": "no ONNX export in the manifest"}
    onnx_runner = open_onnx(handler, handler.weights_path.parent / onnx["file"], onnx_threads(settings))
    inputs = check_inputs(handler, handler.weights_path.parent / onnx["check_file"])
    diff = max_abs_diff(torch_runner, onnx_runner, inputs)
    if not diff <= MAX_ABS_DIFF:  # NaN fails too
        raise StartupError(f"model '{handler.name}': ONNX Runtime and PyTorch disagree on the fixed check inputs "
                           f"({onnx['check_file']}): largest absolute logit difference {diff:.3g} > "
                           f"{MAX_ABS_DIFF:g}; run python -m app.serving.onnx_export --models {handler.name}")
    info.update(max_abs_diff=float(f"{diff:.3g}"), onnxruntime_threads=onnx_runner.threads)
    if backend == "onnxruntime":
        return onnx_runner, {**info, "backend": "onnxruntime", "reason": "INFERENCE_BACKEND=onnxruntime"}
    timings = time_backends({"torch": torch_runner, "onnxruntime": onnx_runner}, inputs,
                            (1, settings.batch_max_size))
    ratios = [timings["onnxruntime"][n] / max(timings["torch"][n], 1e-6) for n in timings["torch"]]
    ratio = math.prod(ratios) ** (1 / len(ratios))
    faster = ratio < 1.0
    chosen = onnx_runner if faster else torch_runner
    reason = (f"measured at startup: ONNX Runtime takes {ratio:.2f}x PyTorch's time (geometric mean over batch "
              f"sizes {', '.join(timings['torch'])})")
    return chosen, {**info, "backend": chosen.backend, "reason": reason, "ms_per_batch": timings,
                    "onnxruntime_time_ratio": round(ratio, 3)}


def open_onnx(handler: ModelHandler, path: Path, threads: int) -> OnnxRunner:
    try:
        runner = OnnxRunner(path, threads)
    except ImportError as exc:
        raise StartupError(f"INFERENCE_BACKEND={handler.settings.inference_backend} needs the onnxruntime "
                           f"package ({exc}); pip install onnxruntime, or set INFERENCE_BACKEND=torch") from exc
    except Exception as exc:  # onnxruntime raises its own types for unreadable or invalid graphs
        raise StartupError(f"model '{handler.name}': {path}: ONNX Runtime cannot load it ({exc}); "
                           f"run python -m app.serving.onnx_export --models {handler.name}") from exc
    missing = set(runner.input_names) ^ set(handler.onnx_dynamic_axes)
    if missing:
        raise StartupError(f"model '{handler.name}': {path} takes inputs {runner.input_names}, the handler gives "
                           f"{sorted(handler.onnx_dynamic_axes)}; run python -m app.serving.onnx_export "
                           f"--models {handler.name}")
    return runner


def check_inputs(handler: ModelHandler, path: Path) -> dict[str, torch.Tensor]:
    """The fixed held-out inputs stored next to the export (network inputs, as `collate` makes them)."""
    try:
        with np.load(path) as npz:
            inputs = {name: torch.from_numpy(npz[name]) for name in handler.onnx_dynamic_axes}
    except Exception as exc:
        raise StartupError(f"model '{handler.name}': {path}: unreadable check inputs ({exc}); "
                           f"run python -m app.serving.onnx_export --models {handler.name}") from exc
    return inputs


def max_abs_diff(reference: Runner, other: Runner, inputs: dict[str, torch.Tensor]) -> float:
    """Largest absolute logit difference over the whole check batch and over its first item alone."""
    diffs = [0.0]
    for batch in (inputs, rows(inputs, 1)):
        expected, got = reference(batch).float().cpu(), other(batch).float().cpu()
        if expected.shape != got.shape:
            return math.inf
        diff = float((expected - got).abs().max())
        if not math.isfinite(diff):  # max() would pass a NaN over
            return math.inf
        diffs.append(diff)
    return max(diffs)


def rows(inputs: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """A batch of n rows from the check inputs: the first n, repeated cyclically when there are fewer."""
    size = next(iter(inputs.values())).shape[0]
    index = torch.arange(n) % size
    return {name: value[index].contiguous() for name, value in inputs.items()}


def time_backends(runners: dict[str, Runner], inputs: dict[str, torch.Tensor],
                  sizes: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """Fastest observed ms per call of each runner at each batch size, calls interleaved (a busy neighbour slows
    both alike) for TIMING_BUDGET_S, at least one each. Both runners are warm: the check ran them just before."""
    timings: dict[str, dict[str, float]] = {name: {} for name in runners}
    for size in dict.fromkeys(sizes):
        batch = rows(inputs, size)
        samples: dict[str, list[float]] = {name: [] for name in runners}
        started = time.perf_counter()
        while True:
            for name, runner in runners.items():
                t0 = time.perf_counter()
                runner(batch)
                samples[name].append(time.perf_counter() - t0)
            calls = len(samples[next(iter(runners))])
            if calls >= TIMING_MAX_CALLS or time.perf_counter() - started >= TIMING_BUDGET_S:
                break
        for name, values in samples.items():
            timings[name][str(size)] = round(min(values) * 1000, 3)
    return timings
