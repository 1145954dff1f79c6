"""JOB_BACKEND=redis: the API side of style jobs across hosts (the workers are `python -m app.worker`)."""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import suppress
from dataclasses import dataclass

import anyio
import torch

from app.core.config import Settings
from app.style.eta import device_key
from app.style.jobs import JobStoreUnavailable
from app.style.service import StyleServiceBase

logger = logging.getLogger("app.style")

JANITOR_EVERY_S = 1.0  # how often each replica looks for jobs of dead workers
NO_WORKER_GRACE_S = 60.0  # "starting" this long after the API started with no worker, then "unavailable"


@dataclass
class RedisStyleService(StyleServiceBase):
    """JOB_BACKEND=redis: the job store is Redis, jobs travel by Dramatiq, workers run elsewhere (app.worker).

    Every replica runs the janitor: jobs of workers whose heartbeat expired are re-queued (or failed after
    JOB_MAX_ATTEMPTS), and finished jobs older than RESULT_TTL are deleted. Both are atomic scripts, so replicas
    doing it at the same time do not conflict. When Redis is unreachable the job routes answer 503 (the store
    raises JobStoreUnavailable) and everything resumes when it is back; the classifiers never touch Redis."""

    settings: Settings
    device: torch.device

    def __post_init__(self):
        from app.style.dispatch import make_broker, redis_store

        self.broker = make_broker(self.settings)
        self.store = redis_store(self.settings, self.broker)
        self._janitor: asyncio.Task | None = None
        self._last_cleanup = 0.0
        self._store_down = False
        self._live_workers: list[dict] = []
        self._started = time.monotonic()
        self.events = self._event_hub()

    async def start(self) -> None:
        try:
            await anyio.to_thread.run_sync(self.store.ping)
        except JobStoreUnavailable as exc:
            logger.error("%s; job routes answer 503 until it is reachable", exc)
            self._store_down = True
        self._janitor = asyncio.create_task(self._janitor_loop(), name="style-janitor")

    async def stop(self) -> None:
        await self.events.close()
        if self._janitor is not None:
            self._janitor.cancel()
            with suppress(asyncio.CancelledError):
                await self._janitor
        self.store.close()
        self.broker.close()

    def notify(self) -> None:
        """Nothing to do: submit() already sent the job to the workers."""

    @property
    def workers(self) -> list[dict]:
        return self.store.workers()

    def eta_workers(self) -> list[tuple[str, str]]:
        """The live workers, each with its device kind (one that did not say is priced as this API's device)."""
        return [(w["id"], w.get("device") or device_key(self.device)) for w in self.store.workers()]

    def readiness(self) -> tuple[str, str | None]:
        """/readyz `style` from what the janitor saw last (no Redis call on the probe's path)."""
        if self._store_down:
            return "unavailable", "the job store (Redis) cannot be reached"
        if self._live_workers:
            return "ready", None
        if time.monotonic() - self._started < NO_WORKER_GRACE_S:
            return "starting", "no style worker is connected yet (python -m app.worker)"
        return "unavailable", "no style worker is connected (start python -m app.worker); jobs wait in the queue"

    async def _janitor_loop(self) -> None:
        first = True
        while True:
            if not first:
                await asyncio.sleep(JANITOR_EVERY_S)
            first = False
            try:
                self._live_workers = await anyio.to_thread.run_sync(self.store.workers)
                await anyio.to_thread.run_sync(self.store.forget_gone_workers)
                changed = await anyio.to_thread.run_sync(self.store.recover_dead_workers)
                for job_id, status in changed:
                    logger.warning("job %s: its worker stopped sending heartbeats; now %s", job_id, status)
                if self._cleanup_due():
                    await anyio.to_thread.run_sync(self._cleanup)
                if self._store_down:
                    logger.info("the job store (Redis) is reachable again")
                    self._store_down = False
            except asyncio.CancelledError:
                raise
            except JobStoreUnavailable as exc:
                if not self._store_down:
                    logger.error("%s; job routes answer 503 until it is back", exc)
                    self._store_down = True
            except Exception:
                logger.exception("style janitor error")
