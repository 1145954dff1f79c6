"""ModelRegistry: the manifest's models, their handlers and batchers, by name and by task."""
import asyncio
import importlib
import inspect
import logging
import pkgutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

import app.serving.handlers
from app.serving.backends import verify_backend
from app.serving.batcher import BatcherStats, DynamicBatcher
from app.core.config import Settings
from app.core.errors import NotFound, ServiceUnavailable
from app.serving.loading import StartupError, read_manifest, verify_assets, verify_weights
from app.serving.handlers.base import ModelHandler

logger = logging.getLogger(__name__)

LOADING_RETRY_AFTER_S = "2"


def discover_handlers() -> dict[str, type[ModelHandler]]:
    """Architecture name -> handler class, from every module of the app.serving.handlers package."""
    found: dict[str, type[ModelHandler]] = {}
    for module_info in pkgutil.iter_modules(app.serving.handlers.__path__):
        module = importlib.import_module(f"{app.serving.handlers.__name__}.{module_info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if not _is_concrete_handler(cls, module.__name__):
                continue
            for architecture in cls.architectures:
                if architecture in found and found[architecture] is not cls:
                    raise StartupError(f"architecture {architecture} is claimed by both "
                                       f"{found[architecture].__qualname__} and {cls.__qualname__}")
                found[architecture] = cls
    return found


def _is_concrete_handler(cls: type, module_name: str) -> bool:
    return (issubclass(cls, ModelHandler) and cls.__module__ == module_name
            and not inspect.isabstract(cls) and bool(cls.architectures))


LatencyObserver = Callable[[str], Callable[[float], None]]  # model name -> observe(seconds)


@dataclass
class ServedModel:
    handler: ModelHandler
    batcher: DynamicBatcher
    observe_latency: Callable[[float], None]

    async def predict(self, item) -> torch.Tensor:
        return await self.batcher.submit(item)

    def timed(self) -> "_Timed":
        """`with served.timed():` around a request's inference (decode, forward passes, answer): its latency is
        recorded under this model's name, failures included."""
        return _Timed(self.observe_latency)


class _Timed:
    __slots__ = ("observe", "started")

    def __init__(self, observe: Callable[[float], None]):
        self.observe = observe

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc_info) -> None:
        self.observe(time.perf_counter() - self.started)


def _not_recorded(name: str) -> Callable[[float], None]:
    return lambda seconds: None


class ModelRegistry:
    def __init__(self, handlers: dict[str, ModelHandler], device: torch.device, settings: Settings,
                 latency: LatencyObserver = _not_recorded):
        self.handlers = handlers
        self.device = device
        self.settings = settings
        self.latency = latency
        self.batching = batching_per_model(handlers, settings)
        self.status: Literal["loading", "ready", "failed"] = "loading"
        self.error: str | None = None
        self.defaults = default_per_task(handlers)
        self._served: dict[str, ServedModel] = {}
        self.load_seconds: dict[str, float] = {}  # per model, for the model_load_seconds metric

    @classmethod
    def from_settings(cls, settings: Settings, device: torch.device,
                      latency: LatencyObserver = _not_recorded) -> "ModelRegistry":
        """Read and verify the manifest and pick a handler per entry; weights are loaded later by load()."""
        weights_dir = Path(settings.weights_dir)
        entries = read_manifest(weights_dir)
        handler_classes = discover_handlers()
        handlers = {name: _make_handler(entry, handler_classes, weights_dir, settings)
                    for name, entry in entries.items()}
        verify_weights(weights_dir, entries)
        verify_assets(weights_dir)
        verify_backend(entries, settings, device)
        return cls(handlers, device, settings, latency)

    @property
    def loaded(self) -> list[str]:
        return list(self._served)

    async def load(self) -> None:
        """Set up every model (off the event loop) and start its batcher; records failure instead of raising."""
        try:
            for handler in self.handlers.values():
                await self._load_one(handler)
        except Exception as exc:
            self.status, self.error = "failed", str(exc)
            logger.error("model loading failed: %s", exc)
            return
        self.status = "ready"
        logger.info("all %d models ready on %s", len(self._served), self.device)

    async def _load_one(self, handler: ModelHandler) -> None:
        started = time.perf_counter()
        await asyncio.to_thread(handler.setup, self.device)
        batching = self.batching[handler.name]
        batcher = DynamicBatcher(handler.predict, max_size=batching.max_size, max_wait_ms=batching.max_wait_ms,
                                 name=handler.name)
        batcher.start()
        self._served[handler.name] = ServedModel(handler, batcher, self.latency(handler.name))
        self.load_seconds[handler.name] = elapsed = time.perf_counter() - started
        logger.info("loaded %s (%s, %s parameters) on %s in %.2f s, backend %s (%s)", handler.name,
                    handler.entry["architecture"], f"{handler.parameters:,}", self.device, elapsed,
                    handler.inference["backend"], handler.inference["reason"])

    @property
    def backends(self) -> dict[str, str]:
        """The backend each loaded model predicts with (torch | onnxruntime)."""
        return {name: served.handler.inference["backend"] for name, served in self._served.items()}

    def batcher_stats(self) -> dict[str, BatcherStats]:
        return {name: served.batcher.stats for name, served in self._served.items()}

    async def close(self) -> None:
        for name, served in self._served.items():
            await served.batcher.stop()
            stats = served.batcher.stats
            if stats.forward_passes:
                logger.info("%s served %d inputs in %d forward passes (mean batch %.1f)", name, stats.items,
                            stats.forward_passes, stats.mean_batch_size)

    def handler(self, name: str) -> ModelHandler:
        if name not in self.handlers:
            raise NotFound(f"unknown model '{name}'; available: {', '.join(self.handlers)}")
        return self.handlers[name]

    def for_task(self, task: str, name: str | None = None) -> ServedModel:
        """The named model (or the task's default), ready to predict; 404 for a model of another task."""
        name = name or self.defaults.get(task)
        if name is None:
            raise NotFound(f"no {task} model is configured in the manifest")
        handler = self.handlers.get(name)
        if handler is None or handler.task != task:
            of_task = ", ".join(n for n, h in self.handlers.items() if h.task == task)
            problem = f"model '{name}' is a {handler.task} model" if handler else f"unknown model '{name}'"
            raise NotFound(f"{problem}; {task} models: {of_task}")
        self._require_ready()
        return self._served[name]

    def _require_ready(self) -> None:
        if self.status == "loading":
            raise ServiceUnavailable("models are still loading; retry shortly",
                                     headers={"Retry-After": LOADING_RETRY_AFTER_S})
        if self.status == "failed":
            raise ServiceUnavailable(f"model loading failed: {self.error}")

    def describe(self, name: str) -> dict:
        handler = self.handler(name)
        entry = handler.entry
        return {
            "name": name, "task": handler.task, "architecture": entry["architecture"],
            "input_kind": handler.input_kind, "device": str(self.device), "loaded": name in self._served,
            "default": self.defaults.get(handler.task) == name, "classes": handler.classes,
            "parameters": handler.parameters, "sha256": entry["sha256"], "metrics": entry.get("metrics", {}),
            "config": entry["config"], "hyperparameters": entry.get("hyperparameters", {}),
            "trained_at": entry.get("trained_at"), "torch_version": entry.get("torch_version"),
            "training_time_s": entry.get("training_time_s"), "trained_on": entry.get("trained_on"),
            "backend": handler.inference["backend"] if name in self._served else None,
            "inference": handler.inference if name in self._served else None,
            "batching": {"max_size": self.batching[name].max_size, "max_wait_ms": self.batching[name].max_wait_ms},
        }


def _make_handler(entry: dict, handler_classes: dict[str, type[ModelHandler]], weights_dir: Path,
                  settings: Settings) -> ModelHandler:
    architecture = entry["architecture"]
    handler_cls = handler_classes.get(architecture)
    if handler_cls is None:
        raise StartupError(f"{weights_dir / 'manifest.json'}: model '{entry['name']}' has architecture "
                           f"{architecture!r}, which no handler serves (known: {', '.join(sorted(handler_classes))})")
    if entry["task"] != handler_cls.task:
        raise StartupError(f"{weights_dir / 'manifest.json'}: model '{entry['name']}' says task {entry['task']!r} "
                           f"but {architecture} serves task {handler_cls.task!r}")
    return handler_cls(entry, weights_dir, settings)


@dataclass(frozen=True)
class Batching:
    max_size: int
    max_wait_ms: float


def batching_per_model(handlers: dict[str, ModelHandler], settings: Settings) -> dict[str, Batching]:
    """Each model's batching: MODEL_BATCHING's entry for it, else its handler's own (batch_max_size,
    batch_max_wait_ms class attributes), else BATCH_MAX_SIZE and BATCH_MAX_WAIT_MS."""
    overrides = settings.model_batching_map
    unknown = sorted(set(overrides) - set(handlers))
    if unknown:
        raise StartupError(f"MODEL_BATCHING names {', '.join(unknown)}, not in the manifest "
                           f"(models: {', '.join(handlers)})")
    chosen = {}
    for name, handler in handlers.items():
        size, wait_ms = overrides.get(name, (None, None))
        chosen[name] = Batching(
            max_size=size or handler.batch_max_size or settings.batch_max_size,
            max_wait_ms=next(v for v in (wait_ms, handler.batch_max_wait_ms, settings.batch_max_wait_ms)
                             if v is not None))
    return chosen


def default_per_task(handlers: dict[str, ModelHandler]) -> dict[str, str]:
    """The entry marked default for each task, else the task's first entry."""
    first: dict[str, str] = {}
    marked: dict[str, str] = {}
    for name, handler in handlers.items():
        first.setdefault(handler.task, name)
        if handler.entry["default"]:
            if handler.task in marked:
                raise StartupError(f"manifest: task {handler.task} has more than one default model "
                                   f"({marked[handler.task]}, {name})")
            marked[handler.task] = name
    return {**first, **marked}
