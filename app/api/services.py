"""AppServices: what the app serves with, in one typed holder (app.state.services).

create_app builds it (settings, metrics, the shutdown signal); the lifespan completes it (the model registry, the
decode limiter) and runs what installed packages added to it: their lifespans, their /readyz fields and their own
typed state (an extension, looked up by its type). Routes read it only through dependencies (app/api/deps.py, and
an installed package's own deps), never through app.state attributes."""
from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio

from app.core.config import Settings
from app.core.lifecycle import ShutdownSignal
from app.core.observability import Metrics
from app.serving.registry import ModelRegistry

T = TypeVar("T")
Readiness = tuple[str, str | None]  # ("ready" | "starting" | "failed" | ..., a sentence or None)


@dataclass(frozen=True)
class ReadinessProbe:
    """An installed package's field of /readyz. With `holds_startup()` true, create_app(wait_until_ready=True)
    also waits while it says "starting" and refuses to start when it says "failed"."""

    field: str
    waiting_for: str  # what startup errors call it: "the style worker"
    state: Callable[[], Readiness]
    holds_startup: Callable[[], bool] = lambda: True


InstalledLifespan = Callable[["AppServices"], AbstractAsyncContextManager[None]]


@dataclass(eq=False)
class AppServices:
    settings: Settings
    wait_until_ready: bool = False
    shutdown: ShutdownSignal = field(default_factory=ShutdownSignal)
    metrics: Metrics = field(init=False)
    registry: ModelRegistry | None = None  # set by the lifespan; None before startup
    decode_limiter: anyio.CapacityLimiter | None = None
    probes: dict[str, ReadinessProbe] = field(default_factory=dict)
    lifespans: list[InstalledLifespan] = field(default_factory=list)  # entered in order, after the registry
    _extensions: dict[type, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.metrics = Metrics(lambda: self.registry)  # a registry per app: several apps in one process do not clash

    def add_extension(self, extension: T) -> T:
        self._extensions[type(extension)] = extension
        return extension

    def extension(self, kind: type[T]) -> T | None:
        return self._extensions.get(kind)

    def readiness(self, name: str) -> Readiness | None:
        probe = self.probes.get(name)
        return None if probe is None else probe.state()


def services_of(app: Any) -> AppServices:
    """The holder of a FastAPI app (request.app in a dependency)."""
    return app.state.services
