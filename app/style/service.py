"""A style service runs the jobs for the API: the job store, the workers, the time estimates and the job event
streams. Two backends, one protocol (StyleBackend), chosen by JOB_BACKEND in make_style_service:

* embedded (app/style/embedded_service.py, EmbeddedStyleService): worker processes of this server over a SQLite
  store in DATA_DIR. One API process owns a DATA_DIR: run uvicorn with one process and scale with JOB_WORKERS.
* redis (app/style/redis_service.py, RedisStyleService): for several API replicas and worker hosts, a shared
  Redis store, jobs sent by Dramatiq, and `python -m app.worker` on the GPU hosts.

What both share (StyleServiceBase): RESULT_TTL clean-up, the Retry-After estimate, the default output size, and
eta_board(): the time estimates of the moment (app/style/eta.py EtaBoard), from the store's measured step times,
the running and queued jobs and the workers; cached for ETA_CACHE_S. `events` is the JobEventHub of the job event
streams (app/style/events.py: one shared watcher per job, the STREAMS_PER_JOB and MAX_EVENT_STREAMS caps).
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import suppress
from typing import Protocol, runtime_checkable

import torch

from app.core.config import Settings
from app.style.eta import EtaBoard
from app.style.events import JobEventHub
from app.style.jobs import QUEUED, JobStore
from app.style.options import StyleParams

logger = logging.getLogger("app.style")

ETA_CACHE_S = 0.5  # time estimates are recomputed at most this often per process (every poll and stream reads them)


@runtime_checkable
class StyleBackend(Protocol):
    """What the API and the lifespan use of a style service, whichever backend runs the jobs."""

    store: JobStore
    events: JobEventHub

    @property
    def default_size(self) -> int: ...
    @property
    def workers(self) -> list[dict]: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def notify(self) -> None: ...
    def readiness(self) -> tuple[str, str | None]: ...
    def retry_after_s(self) -> int: ...
    def eta_board(self, fresh: bool = False) -> EtaBoard: ...


class StyleServiceBase:
    """What both services share: RESULT_TTL clean-up, the Retry-After estimate and the default output size."""

    settings: Settings
    device: torch.device
    store: JobStore
    _last_cleanup: float

    @property
    def default_size(self) -> int:
        return self.settings.style_default_size or StyleParams().output_size(self.device)

    def _cleanup_every(self) -> float:
        return min(60.0, max(1.0, self.settings.result_ttl / 4))

    def _cleanup(self) -> None:
        self._last_cleanup = time.monotonic()
        deleted = self.store.cleanup(self.settings.result_ttl)
        if deleted:
            logger.info("deleted %d style jobs older than RESULT_TTL (%s s)", deleted, self.settings.result_ttl)

    def _cleanup_due(self) -> bool:
        return time.monotonic() - self._last_cleanup >= self._cleanup_every()

    def retry_after_s(self) -> int:
        """The wait before a full queue has room: when the first worker is free to take its first job (from the
        measured step times); without workers, the mean run time x queued jobs."""
        with suppress(Exception):
            board = self.eta_board()
            if board.next_start_s is not None:
                return int(min(3600, max(1, math.ceil(board.next_start_s))))
        mean = self.store.mean_run_seconds() or 10.0
        queued = self.store.count(QUEUED)
        return int(min(3600, max(1, mean * max(1, queued) / max(1, len(self.workers)))))

    _eta_cache: tuple[float, EtaBoard] | None = None

    def eta_workers(self) -> list[tuple[str, str]]:
        """(worker id, device kind) of the workers that will run the queued jobs."""
        raise NotImplementedError

    def _event_hub(self) -> JobEventHub:
        """The event streams' shared watchers (app/style/events.py), capped by STREAMS_PER_JOB, MAX_EVENT_STREAMS."""
        return JobEventHub(self.store.get, self.eta_board, per_job=self.settings.streams_per_job,
                           total=self.settings.max_event_streams)

    def eta_board(self, fresh: bool = False) -> EtaBoard:
        """The time estimates now (blocking store reads: call it in a worker thread)."""
        cached = self._eta_cache
        if not fresh and cached is not None and time.monotonic() - cached[0] < ETA_CACHE_S:
            return cached[1]
        board = EtaBoard(self.store.active_jobs(), self.eta_workers(), self.store.step_times())
        self._eta_cache = (time.monotonic(), board)
        return board



def make_style_service(settings: Settings, device: torch.device) -> StyleBackend:
    if settings.job_backend == "redis":
        from app.style.redis_service import RedisStyleService  # imports Dramatiq and Redis only when chosen

        return RedisStyleService(settings, device)
    from app.style.embedded_service import EmbeddedStyleService

    return EmbeddedStyleService(settings, device)
