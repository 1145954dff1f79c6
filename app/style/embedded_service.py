"""JOB_BACKEND=embedded: the style jobs' worker processes inside the API server, over a SQLite store in DATA_DIR.

* start(): jobs left running by a previous process are re-queued (once) or failed; old results are cleaned up;
  the worker processes are spawned at once, in the background (each loads VGG and measures the device while the
  server starts serving), so the first job does not wait for them; the supervisor task starts. `readiness()`
  says whether a worker is ready (/readyz `style`).
* The supervisor (an asyncio task, every SUPERVISE_EVERY_S) restarts a worker process that died (its job is
  re-queued once, or failed) with a backoff when it keeps dying, and deletes results older than RESULT_TTL.
* stop(): the event streams are closed first; workers are asked to stop (a running job is handed back to the
  queue), then joined, terminated or killed after a bounded wait (one still loading holds no job and is
  terminated at once).
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import secrets
import time
from contextlib import suppress
from dataclasses import dataclass, field

import anyio
import torch

from app.core.config import Settings, usable_cpus
from app.style.eta import device_key
from app.style.jobs import QUEUED, SERVER_STOPPED, WORKER_DIED
from app.style.embedded_worker import FAILED, READY, STARTING, WorkerConfig, worker_main
from app.style.service import StyleServiceBase
from app.style.sqlite_store import SQLiteJobStore

logger = logging.getLogger("app.style")

SUPERVISE_EVERY_S = 0.25
WORKER_STOP_TIMEOUT_S = 10.0  # how long a worker gets to finish its current step and exit at shutdown
QUICK_DEATH_S = 10.0  # a worker dying sooner than this after its start counts towards the backoff
MAX_BACKOFF_S = 30.0
FAILING_DEATHS = 3  # a worker that died this many times in a row soon after starting: /readyz style "failed"


def embedded_style_threads(settings: Settings, device: torch.device) -> int:
    """STYLE_THREADS when set. Else, on the CPU, one fewer than the server's CPUs (at least 1): the API keeps a core,
    which a job's parallel regions would otherwise keep stalling on (bench.contention, 2 cores, a 256 px job beside
    digits at concurrency 1: 2.1x slower with both threads, 1.1x with one; a job alone takes 34 s with two, 56 s with
    one). On CUDA, TORCH_THREADS."""
    if settings.style_threads > 0:
        return settings.style_threads
    if device.type != "cpu":
        return settings.torch_threads
    return max(1, usable_cpus() - 1)


@dataclass
class WorkerSlot:
    index: int
    process: multiprocessing.process.BaseProcess | None = None
    worker_id: str = ""
    started_at: float = 0.0
    quick_deaths: int = 0
    restart_at: float = 0.0  # monotonic time before which no replacement is started (backoff)
    state: object = None  # multiprocessing.Value("i"): worker.STARTING | READY | FAILED
    error: object = None  # multiprocessing.Array("c"): the worker's load error


@dataclass
class EmbeddedStyleService(StyleServiceBase):
    settings: Settings
    device: torch.device
    store: SQLiteJobStore = field(init=False)

    def __post_init__(self):
        self.store = SQLiteJobStore(self.settings.data_dir, self.settings.job_max_attempts)
        self._ctx = multiprocessing.get_context("spawn")
        self._wake = self._ctx.Event()
        self._stop = self._ctx.Event()
        self._slots = [WorkerSlot(i) for i in range(self.settings.job_workers)]
        self._workers_wanted = False
        self._supervisor: asyncio.Task | None = None
        self._last_cleanup = 0.0
        self._device_key = device_key(self.device)
        self.events = self._event_hub()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        recovered = await anyio.to_thread.run_sync(self.store.recover_orphans, SERVER_STOPPED)
        for job in recovered:
            logger.warning("job %s was running when the server stopped: now %s", job.id, job.status)
        await anyio.to_thread.run_sync(self._cleanup)
        self.ensure_workers()  # spawned now; each loads VGG and warms up in its own process, off this loop
        self._supervisor = asyncio.create_task(self._supervise(), name="style-supervisor")

    async def stop(self) -> None:
        await self.events.close()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with suppress(asyncio.CancelledError):
                await self._supervisor
        self._stop.set()
        self._wake.set()
        running = [slot for slot in self._slots if slot.process is not None]
        for slot in running:
            if slot.state is not None and slot.state.value == STARTING and slot.process.is_alive():
                slot.process.terminate()  # still loading or warming up: it holds no job, nothing to hand back
        await anyio.to_thread.run_sync(self._join_all, running)
        for slot in running:
            released = self.store.release(slot.worker_id)  # jobs of a worker that had to be killed
            if released:
                logger.warning("jobs %s handed back to the queue", released)
        self.store.close()

    def _join_all(self, slots: list[WorkerSlot]) -> None:
        deadline = time.monotonic() + WORKER_STOP_TIMEOUT_S
        for slot in slots:
            slot.process.join(max(0.0, deadline - time.monotonic()))
        for slot in slots:
            if slot.process.is_alive():
                logger.warning("worker %s did not stop in %.0f s; terminating it", slot.worker_id, WORKER_STOP_TIMEOUT_S)
                slot.process.terminate()
                slot.process.join(2.0)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join(2.0)

    # ------------------------------------------------------------------ workers

    def notify(self) -> None:
        """A job was queued: make sure workers exist and wake one."""
        self.ensure_workers()
        self._wake.set()

    def ensure_workers(self) -> None:
        if self._workers_wanted or self._stop.is_set():
            return
        self._workers_wanted = True
        for slot in self._slots:
            self._start_worker(slot)

    def _start_worker(self, slot: WorkerSlot) -> None:
        s = self.settings
        slot.worker_id = f"w{slot.index}-{secrets.token_hex(4)}"
        config = WorkerConfig(
            worker_id=slot.worker_id, data_dir=str(s.data_dir), device=str(self.device),
            vgg_weights=str(s.style_vgg_weights), max_image_pixels=s.max_image_pixels,
            torch_threads=embedded_style_threads(s, self.device), nice=s.worker_nice, log_level=s.log_level,
            parent_pid=os.getpid(), weights_dir=str(s.weights_dir))
        slot.state = self._ctx.Value("i", STARTING, lock=False)
        slot.error = self._ctx.Array("c", 512, lock=False)
        process = self._ctx.Process(target=worker_main, args=(config, self._wake, self._stop, slot.state, slot.error),
                                    name=f"style-worker-{slot.index}", daemon=True)
        process.start()
        slot.process, slot.started_at = process, time.monotonic()
        logger.info("started style worker %s (pid %d)", slot.worker_id, process.pid)

    @property
    def workers(self) -> list[dict]:
        return [{"id": slot.worker_id, "pid": slot.process.pid if slot.process else None,
                 "alive": bool(slot.process and slot.process.is_alive()), "state": self._slot_state(slot)}
                for slot in self._slots]

    @staticmethod
    def _slot_state(slot: WorkerSlot) -> str:
        if slot.process is None or not slot.process.is_alive() or slot.state is None:
            return "stopped"
        return {STARTING: "starting", READY: "ready", FAILED: "failed"}.get(slot.state.value, "starting")

    def eta_workers(self) -> list[tuple[str, str]]:
        # every slot that is (or will be) running; a worker still starting will take the queue's first job
        return [(slot.worker_id, self._device_key) for slot in self._slots if slot.worker_id]

    def readiness(self) -> tuple[str, str | None]:
        """/readyz `style`: ready (a worker has VGG loaded and measured), starting, failed or unavailable."""
        if not self._slots:
            return "unavailable", "JOB_WORKERS=0: style jobs are queued but no worker runs them"
        states = [self._slot_state(slot) for slot in self._slots]
        if "ready" in states:
            return "ready", None
        if "failed" in states:
            slot = self._slots[states.index("failed")]
            message = slot.error.value.decode("utf-8", "replace") if slot.error is not None else ""
            return "failed", message or "the style engine could not be loaded"
        if any(slot.quick_deaths >= FAILING_DEATHS for slot in self._slots):
            return "failed", "the style worker process keeps dying at start; see the server log"
        return "starting", "the style worker is loading VGG-19 and measuring the device"

    async def _supervise(self) -> None:
        while True:
            try:
                await asyncio.sleep(SUPERVISE_EVERY_S)
                for slot in self._slots:
                    if slot.process is not None and not slot.process.is_alive() and not self._stop.is_set():
                        await self._replace(slot)
                    elif slot.process is None and self._workers_wanted and time.monotonic() >= slot.restart_at:
                        self._start_worker(slot)
                if not self._workers_wanted and await anyio.to_thread.run_sync(self.store.count, QUEUED):
                    self.ensure_workers()  # queued by another route into the store (or left from before)
                if self._cleanup_due():
                    await anyio.to_thread.run_sync(self._cleanup)
            except asyncio.CancelledError:
                raise
            except Exception:  # the supervisor must outlive any one failure (a locked database, ...)
                logger.exception("style supervisor error")

    async def _replace(self, slot: WorkerSlot) -> None:
        code = slot.process.exitcode
        reason = f"{WORKER_DIED} (exit code {code})"
        recovered = await anyio.to_thread.run_sync(self.store.recover_worker, slot.worker_id, reason)
        for job in recovered:
            logger.warning("job %s: %s; now %s", job.id, reason, job.status)
        lived = time.monotonic() - slot.started_at
        slot.quick_deaths = slot.quick_deaths + 1 if lived < QUICK_DEATH_S else 0
        delay = min(MAX_BACKOFF_S, 2.0 ** (slot.quick_deaths - 1)) if slot.quick_deaths else 0.0
        logger.error("style worker %s died (exit code %s) after %.1f s; replacing it%s", slot.worker_id, code, lived,
                     f" in {delay:.0f} s" if delay else "")
        slot.process.close()
        slot.process = None
        slot.restart_at = time.monotonic() + delay
