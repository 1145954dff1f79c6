"""The embedded backend's worker process: it loads the StyleEngine (VGG-19) once, then runs queued jobs one at a
time with JobRunner (app/style/runner.py).

It is started by app.style.embedded_service with the multiprocessing "spawn" context (a fresh interpreter:
CUDA-safe, and no copy of the API process's state). The only shared state is the job store (SQLite + files) and
two events: `wake` (set by the API when a job is submitted; the worker also polls every WAKE_POLL_S) and `stop`
(set at shutdown: a running job is handed back to the queue and the process exits).

A worker whose parent dies (the server was killed) stops at once without touching its job's row: the next
server start re-queues it (or fails it after its second interruption). The worker reports through `state`
(STARTING, READY or FAILED, with the error in `error`) when it is ready for jobs, for /readyz.
"""
from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from app.style.runner import JobRunner, ParentGone

WAKE_POLL_S = 0.5  # how often an idle worker looks for work without being woken
STARTING, READY, FAILED = 0, 1, 2  # the worker's `state`

logger = logging.getLogger("app.style.embedded_worker")


@dataclass(frozen=True)
class WorkerConfig:
    worker_id: str
    data_dir: str
    device: str
    vgg_weights: str
    max_image_pixels: int
    torch_threads: int = 0
    nice: int = 0
    log_level: str = "info"
    parent_pid: int = 0
    weights_dir: str = ""  # WEIGHTS_DIR: where the style decoder (init=instant) is looked up first


def worker_main(config: WorkerConfig, wake, stop, state=None, error=None) -> None:
    """Process entry point (must stay importable without side effects: the spawn context pickles it by name)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops us cleanly
    app_logger = logging.getLogger("app")
    app_logger.setLevel(config.log_level.upper())
    if not app_logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        app_logger.addHandler(handler)
    Worker(config, wake, stop, state, error).serve()


class Worker:
    """The embedded backend's worker process: claims jobs from the SQLite store and runs them."""

    def __init__(self, config: WorkerConfig, wake, stop, state=None, error=None):
        from app.style.sqlite_store import SQLiteJobStore

        self.config = config
        self.id = config.worker_id
        self.wake = wake
        self.stop = stop
        self.state = state  # multiprocessing.Value("i"): STARTING -> READY | FAILED
        self.error = error  # multiprocessing.Array("c"): the load error, for /readyz
        self.store = SQLiteJobStore(Path(config.data_dir))
        self.runner = JobRunner(self.store, self.id, config.max_image_pixels, stopping=self.stopping)
        self.runner.job_waiting = wake.is_set  # set by the API at every submit

    def parent_alive(self) -> bool:
        return not self.config.parent_pid or os.getppid() == self.config.parent_pid

    def stopping(self) -> bool:
        if not self.parent_alive():
            raise ParentGone()
        return self.stop.is_set()

    def _report(self, state: int, message: str = "") -> None:
        if self.error is not None and message:
            self.error.value = message.encode("utf-8", "replace")[: len(self.error) - 1]
        if self.state is not None:
            self.state.value = state

    def serve(self) -> None:
        try:
            self.runner.load_engine(self.config.device, self.config.vgg_weights, self.config.torch_threads,
                                    self.config.nice, self.config.weights_dir)
        except ParentGone:
            return
        self._report(FAILED if self.runner.engine is None else READY, self.runner.load_error or "")
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
