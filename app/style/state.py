"""The style package's per-app state, one extension of the app's AppServices (app/api/services.py): the job
service (None until the lifespan has started it), instant style's limiter and styler, and the style metrics."""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Any

import anyio

from app.api.services import services_of
from app.core.config import Settings
from app.core.errors import ServiceUnavailable
from app.serving.loading import resolve_device
from app.style.instant import InstantStyler, InstantUnavailable
from app.style.metrics import StyleMetrics
from app.style.service import StyleBackend

logger = logging.getLogger("app.style")


@dataclass(eq=False)
class StyleState:
    instant: InstantState
    metrics: StyleMetrics
    service: StyleBackend | None = None


def style_state(app: Any) -> StyleState:
    """The style package's state of an app (request.app in a dependency); install(app) has put it there."""
    state = services_of(app).extension(StyleState)
    if state is None:
        raise LookupError("style jobs are not installed in this app (STYLE_JOBS_ENABLED=false)")
    return state


class InstantState:
    """Per app: the styler (loaded once, on first use) and the limiter that bounds concurrent requests."""

    def __init__(self, settings: Settings, concurrency: int | None = None, queue: int | None = None):
        self.settings = settings
        self.concurrency = concurrency or settings.instant_style_concurrency
        self.queue = queue if queue is not None else settings.instant_style_queue
        self.limiter = anyio.CapacityLimiter(self.concurrency)
        self.admitted = 0  # running + waiting; checked and changed on the event loop only
        self.recent_s: list[float] = []  # the last run times, for Retry-After
        self._styler: InstantStyler | None = None
        self._failure: str | None = None
        self._lock = threading.Lock()

    def styler(self) -> InstantStyler:
        """Load on first use (in a worker thread); a load that failed is not retried (503 with the reason)."""
        with self._lock:
            if self._styler is None and self._failure is None:
                s = self.settings
                try:
                    self._styler = InstantStyler.load(
                        [s.weights_dir, s.style_vgg_weights.parent],
                        [s.style_vgg_weights, s.weights_dir / "vgg19_features_0-16.pth",
                         s.style_vgg_weights.parent / "vgg19_features_0-16.pth"],
                        resolve_device(s.device), s.instant_style_precision)
                except InstantUnavailable as exc:
                    self._failure = str(exc)
                except Exception as exc:  # a corrupt file: torch raises several types
                    logger.exception("instant style could not load")
                    self._failure = f"the style decoder could not be loaded ({type(exc).__name__}: {exc})"
            if self._styler is None:
                raise ServiceUnavailable(f"instant style is unavailable: {self._failure}")
            return self._styler

    def retry_after_s(self) -> int:
        typical = sorted(self.recent_s)[len(self.recent_s) // 2] if self.recent_s else 1.0
        return max(1, math.ceil(typical * (self.admitted + 1) / self.concurrency))

    def record(self, seconds: float) -> None:
        self.recent_s = (self.recent_s + [seconds])[-20:]
