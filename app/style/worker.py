"""Running style jobs: JobRunner (one claimed job on a StyleEngine, its fate recorded in the store; used by both
backends) and the embedded backend's worker process, which loads the StyleEngine (VGG-19) once, then runs queued
jobs one at a time. JOB_BACKEND=redis workers are app/worker.py.

The embedded worker is started by app.style.service with the multiprocessing "spawn" context (a fresh interpreter: CUDA-safe, and no
copy of the API process's state). The only shared state is the job store (SQLite + files) and two events:
`wake` (set by the API when a job is submitted; the worker also polls every WAKE_POLL_S) and `stop`
(set at shutdown: a running job is handed back to the queue and the process exits).

A worker whose parent dies (the server was killed) stops at once without touching its job's row: the next
server start re-queues it (or fails it after its second interruption).
"""
from __future__ import annotations

import io
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

WAKE_POLL_S = 0.5  # how often an idle worker looks for work without being woken
PROGRESS_EVERY_S = 0.2  # progress/losses written at most this often (and always at the first and last step)
PREVIEW_EVERY_S = 1.0  # a preview PNG at most this often
PRESET_MAX_PIXELS = 100_000_000  # the shipped paintings are trusted; MAX_IMAGE_PIXELS is for uploads

logger = logging.getLogger("app.style.worker")


@dataclass(frozen=True)
class WorkerConfig:
    worker_id: str
    data_dir: str
    device: str
    vgg_weights: str
    max_image_pixels: int
    torch_threads: int = 0
    log_level: str = "info"
    parent_pid: int = 0


class ParentGone(Exception):
    """The API process died: leave the job for the next server start."""


def worker_main(config: WorkerConfig, wake, stop) -> None:
    """Process entry point (must stay importable without side effects: the spawn context pickles it by name)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops us cleanly
    app_logger = logging.getLogger("app")
    app_logger.setLevel(config.log_level.upper())
    if not app_logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        app_logger.addHandler(handler)
    Worker(config, wake, stop).serve()


class Worker:
    """The embedded backend's worker process: claims jobs from the SQLite store and runs them."""

    def __init__(self, config: WorkerConfig, wake, stop):
        from app.style.jobs import SQLiteJobQueue

        self.config = config
        self.id = config.worker_id
        self.wake = wake
        self.stop = stop
        self.store = SQLiteJobQueue(Path(config.data_dir))
        self.runner = JobRunner(self.store, self.id, config.max_image_pixels, stopping=self.stopping)

    def parent_alive(self) -> bool:
        return not self.config.parent_pid or os.getppid() == self.config.parent_pid

    def stopping(self) -> bool:
        if not self.parent_alive():
            raise ParentGone()
        return self.stop.is_set()

    def serve(self) -> None:
        self.runner.load_engine(self.config.device, self.config.vgg_weights, self.config.torch_threads)
        try:
            while not self.stop.is_set() and self.parent_alive():
                self.wake.clear()
                job = self.store.claim(self.id)
                if job is None:
                    self.wake.wait(WAKE_POLL_S)
                    continue
                self.runner.run(job)
        except ParentGone:
            logger.warning("worker %s: the server process is gone; exiting", self.id)
        finally:
            self.store.close()


class JobRunner:
    """Runs one claimed job on a StyleEngine and records its fate in the store; shared by both backends.

    `stopping()` is True when the process is shutting down (the job is handed back to the queue, not cancelled)."""

    def __init__(self, store, worker_id: str, max_image_pixels: int, stopping):
        self.store = store
        self.id = worker_id
        self.max_image_pixels = max_image_pixels
        self.stopping = stopping
        self.engine = None
        self.load_error: str | None = None

    def load_engine(self, device_name: str, vgg_weights: str, torch_threads: int = 0) -> None:
        import torch

        from app.core.loading import resolve_device
        from app.style.engine import StyleEngine

        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        started = time.monotonic()
        try:
            device = resolve_device(device_name)
            self.engine = StyleEngine(vgg_weights, device)
        except Exception as exc:  # every job this worker takes will fail with this message
            self.load_error = f"the style engine could not be loaded: {exc}"
            logger.error("worker %s: %s", self.id, self.load_error)
            return
        logger.info("worker %s (pid %d) ready on %s in %.1f s", self.id, os.getpid(), device,
                    time.monotonic() - started)

    def run(self, job) -> None:
        from app.core.errors import APIError
        from app.style.engine import StyleCancelled

        started = time.monotonic()
        logger.info("worker %s: job %s started (attempt %d)", self.id, job.id, job.attempts)
        try:
            if self.engine is None:
                self.store.fail(job.id, self.load_error or "the style engine is not available", self.id)
                return
            content, styles, params = self.inputs(job)
            progress = _Progress(self, job.id)
            image = self.engine.run(content, styles, params, on_progress=progress, should_stop=progress.should_stop)
            done = self.store.finish(job.id, png_bytes(image), progress.last_losses, self.id)
            logger.info("worker %s: job %s %s in %.1f s", self.id, job.id, "succeeded" if done else "was cancelled",
                        time.monotonic() - started)
        except StyleCancelled:
            if self.stopping() and not self.store.should_stop(job.id, self.id):
                self.store.release(self.id, job.id)  # shutdown, not a cancel: run it again later
                logger.info("worker %s: job %s handed back to the queue (shutdown)", self.id, job.id)
            else:
                self.store.mark_cancelled(job.id, self.id)
                logger.info("worker %s: job %s cancelled", self.id, job.id)
        except APIError as exc:  # an input that no longer decodes (validated at submit, so rare)
            self.store.fail(job.id, f"bad input: {exc.detail}", self.id)
        except ValueError as exc:  # options the engine refuses (layers a partial VGG lacks, style count)
            self.store.fail(job.id, str(exc), self.id)
        except ParentGone:
            raise
        except Exception as exc:
            self.fail_unexpected(job, exc)

    def fail_unexpected(self, job, exc: Exception) -> None:
        import torch

        from app.style.jobs import JobStoreUnavailable

        if isinstance(exc, JobStoreUnavailable):
            raise exc  # nothing can be recorded now; the caller decides (the job comes back after the timeout)
        if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
            size = job.params.get("size")
            message = f"out of memory at size {size}; try a smaller size"
        else:
            logger.exception("worker %s: job %s failed", self.id, job.id)
            message = f"style transfer failed: {type(exc).__name__}: {exc}"
        self.store.fail(job.id, message, self.id)

    def inputs(self, job):
        from app.preprocessing.images import open_image
        from app.style.engine import StyleParams
        from app.style.presets import preset_path

        def upload(name: str):
            data = self.store.read_file(job.id, name)
            if data is None:
                raise ValueError(f"the uploaded image {name!r} of this job is gone from the job store")
            return open_image(data, self.max_image_pixels)

        content = upload(job.inputs["content"])
        styles = [open_image(Path(preset_path(s["preset"])).read_bytes(), PRESET_MAX_PIXELS) if "preset" in s
                  else upload(s["file"]) for s in job.inputs["styles"]]
        options = {k: v for k, v in job.params.items() if k in StyleParams.model_fields}
        return content, styles, StyleParams(**options)


class _Progress:
    """on_progress / should_stop for one run: throttled writes to the store, cancellation checks."""

    def __init__(self, runner: JobRunner, job_id: str):
        self.runner = runner
        self.job_id = job_id
        self.last_write = 0.0
        self.last_preview = 0.0
        self.last_losses: dict | None = None

    def should_stop(self) -> bool:
        from app.style.jobs import JobStoreUnavailable

        runner = self.runner
        if runner.stopping():
            return True
        try:
            return runner.store.should_stop(self.job_id, runner.id)
        except JobStoreUnavailable:
            return False  # keep optimising through a short store outage; the next check may get through

    def __call__(self, info) -> None:
        from app.style.engine import StyleCancelled
        from app.style.jobs import JobStoreUnavailable

        self.last_losses = {k: round(float(v), 6) for k, v in info.losses.items()}
        t = time.monotonic()
        first_or_last = info.step <= 1 or info.step >= info.total
        if not first_or_last and t - self.last_write < PROGRESS_EVERY_S:
            return
        preview = None
        if first_or_last or t - self.last_preview >= PREVIEW_EVERY_S:
            preview = png_bytes(info.preview())
            self.last_preview = t
        self.last_write = t
        try:
            still_ours = self.runner.store.update_progress(self.job_id, info.step, info.total, self.last_losses,
                                                           preview, self.runner.id)
        except JobStoreUnavailable:
            return  # this progress is lost; the job goes on
        if not still_ours:
            raise StyleCancelled("the job was cancelled")


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()
