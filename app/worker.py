"""`python -m app.worker`: a style-transfer worker for JOB_BACKEND=redis, on any host that reaches REDIS_URL.

It loads VGG-19 once per device and measures the device (a sub-second warm-up whose step times feed every
replica's time estimates), then runs the jobs Dramatiq delivers, one at a time per device, writing progress,
previews and results to the Redis job store and stopping within one optimisation step when a job is cancelled.
Settings come from the same environment variables as the server (REDIS_URL, REDIS_NAMESPACE, DEVICE,
STYLE_VGG_WEIGHTS, JOB_MAX_ATTEMPTS, JOB_HEARTBEAT_TIMEOUT_S, ...).

    python -m app.worker                        # DEVICE (auto: the first GPU, else the CPU)
    python -m app.worker --devices all          # one process per visible GPU
    python -m app.worker --devices cuda:0,cuda:1

SIGTERM or Ctrl-C: the running job is handed back to the queue (its attempt not counted) and the worker exits.
A worker that is killed outright stops sending heartbeats; after JOB_HEARTBEAT_TIMEOUT_S its job is retried on
another worker, up to JOB_MAX_ATTEMPTS starts.
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time

from app.core.config import Settings

logger = logging.getLogger("app.worker")

JOB_HANDBACK_TIMEOUT_S = 30.0  # how long the running job gets to reach its next step and hand itself back
CLAIM_RETRY_S = 1.0
POLL_MS = 100  # longest pause between two looks at the queue
RESTART_BACKOFF_S = (1.0, 30.0)


class RedisWorker:
    """One device: a Dramatiq worker with one thread and a prefetch of one, so it holds at most one job."""

    def __init__(self, settings: Settings, device: str):
        from app.style.dispatch import declare_actor, make_broker, redis_store
        from app.style.runner import JobRunner

        self.settings = settings
        self.id = f"{socket.gethostname()}-{os.getpid()}-{device.replace(':', '')}"
        self.stop_requested = threading.Event()
        self.broker = make_broker(settings)
        self.store = redis_store(settings, self.broker)
        self.runner = JobRunner(self.store, self.id, settings.max_image_pixels, stopping=self.stop_requested.is_set)
        self.device = device
        self.current_job: str | None = None
        self._job_lock = threading.Lock()  # claim + current_job vs the heartbeat's write of current_job
        declare_actor(self.broker, self.handle)

    def handle(self, job_id: str) -> None:
        """One Dramatiq message: claim the job (or drop a duplicate), run it, let the message be acknowledged."""
        from app.style.jobs import JobStoreUnavailable

        job = self._claim(job_id)
        if job is None:
            return
        try:
            self.runner.run(job)
        except JobStoreUnavailable as exc:
            logger.error("worker %s: job %s could not be recorded (%s); it is retried once this worker's "
                         "heartbeat shows it is no longer running it", self.id, job_id, exc)
        finally:
            with self._job_lock:
                self.current_job = None

    def _claim(self, job_id: str):
        from app.style.jobs import JobStoreUnavailable

        while not self.stop_requested.is_set():
            try:
                with self._job_lock:
                    outcome, job = self.store.claim_job(job_id, self.id)
                    if job is not None:
                        self.current_job = job_id
            except JobStoreUnavailable as exc:  # keep the message until the store is back
                logger.warning("worker %s: cannot claim job %s yet: %s", self.id, job_id, exc)
                time.sleep(CLAIM_RETRY_S)
                continue
            if job is None:
                logger.info("worker %s: job %s not run (%s)", self.id, job_id, outcome)
            return job
        self.store.dispatch(job_id)  # stopping before it could be claimed: send it again for another worker
        return None

    def _heartbeat(self) -> None:
        from app.style.jobs import JobStoreUnavailable

        every = self.settings.job_heartbeat_timeout_s / 3
        while not self.stop_requested.wait(every):
            try:
                with self._job_lock:
                    self.store.heartbeat(self.id, self.current_job)
            except JobStoreUnavailable as exc:
                logger.warning("worker %s: heartbeat failed: %s", self.id, exc)

    def serve(self) -> None:
        import dramatiq

        # VGG loaded and the device measured (warm-up) before the first heartbeat: a live worker is a ready one
        self.runner.load_engine(self.device, str(self.settings.style_vgg_weights), self.settings.torch_threads,
                                    self.settings.worker_nice, str(self.settings.weights_dir))
        self.store.register_worker(self.id, self.runner.device_key)
        self.store.heartbeat(self.id, None)
        beat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        beat.start()
        # A busy consumer (prefetch 1) backs off between polls up to worker_timeout, and the next job waits out the
        # rest of that sleep: 100 ms keeps the gap between two jobs short for one cheap script call per poll.
        worker = dramatiq.Worker(self.broker, worker_threads=1, worker_timeout=POLL_MS)
        worker.queue_prefetch = 1  # one job held at a time: the next waits in Redis for whichever worker is free
        worker.start()
        logger.info("worker %s listening on %s (namespace %s)", self.id, _redacted(self.settings.redis_url),
                    self.settings.redis_namespace)
        try:
            self.stop_requested.wait()
        finally:
            logger.info("worker %s stopping", self.id)
            worker.stop(timeout=int(JOB_HANDBACK_TIMEOUT_S * 1000))
            try:
                self.store.forget_worker(self.id)
            except Exception:  # Redis may be down at exit; the key expires by itself
                pass
            self.broker.close()
            self.store.close()


def _redacted(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


def serve_device(device: str) -> None:
    """Process entry point: one worker on one device until SIGTERM/SIGINT."""
    from app.core.observability import configure_logging

    settings = Settings()
    configure_logging(settings)
    worker = RedisWorker(settings, device)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop_requested.set())
    worker.serve()


def resolve_devices(spec: str, default: str) -> list[str]:
    import torch

    spec = spec.strip().lower()
    if spec in ("", "default"):
        spec = default
    if spec == "all":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(count)] or ["cpu"]
    return [part.strip() for part in spec.split(",") if part.strip()]


def supervise(devices: list[str]) -> None:
    """Several devices: a child process per device, restarted (with a backoff) when it dies."""
    ctx = multiprocessing.get_context("spawn")
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    children: list[multiprocessing.process.BaseProcess | None] = [None] * len(devices)
    backoff = [RESTART_BACKOFF_S[0]] * len(devices)
    restart_at = [0.0] * len(devices)
    while not stopping.is_set():
        for slot, device in enumerate(devices):
            child = children[slot]
            if child is not None and child.is_alive():
                continue
            if child is not None:
                logger.error("worker on %s exited with %s; restarting it in %.0f s", device, child.exitcode,
                             backoff[slot])
                restart_at[slot] = time.monotonic() + backoff[slot]
                backoff[slot] = min(RESTART_BACKOFF_S[1], backoff[slot] * 2)
                children[slot] = None
            elif time.monotonic() >= restart_at[slot]:
                children[slot] = ctx.Process(target=serve_device, args=(device,), name=f"style-worker-{slot}")
                children[slot].start()
        stopping.wait(0.5)
    running = [child for child in children if child is not None]
    for child in running:
        child.terminate()  # SIGTERM: each hands its job back
    for child in running:
        child.join(JOB_HANDBACK_TIMEOUT_S + 5)
        if child.is_alive():
            child.kill()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default="default",
                        help="'default' (the DEVICE setting), 'all' (every visible GPU), or a list: cuda:0,cuda:1")
    args = parser.parse_args(argv)
    settings = Settings()
    if settings.job_backend != "redis":
        logging.basicConfig()
        logger.warning("JOB_BACKEND=%s: this worker serves JOB_BACKEND=redis deployments (the embedded backend's "
                       "workers are started by the server itself); using REDIS_URL anyway", settings.job_backend)
    devices = resolve_devices(args.devices, settings.device)
    if len(devices) == 1:
        serve_device(devices[0])
    else:
        from app.core.observability import configure_logging

        configure_logging(settings)
        supervise(devices)


if __name__ == "__main__":
    sys.exit(main())
