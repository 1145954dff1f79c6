"""Running style jobs: JobRunner runs one claimed job on a StyleEngine and records its fate in the store. Both
backends use it: the embedded worker process (app/style/embedded_worker.py) and JOB_BACKEND=redis workers
(app/worker.py).

Every worker measures its device: after loading VGG it times a few tiny runs (the warm-up, well under a second
on a CPU), and while it runs jobs it times each stretch of evaluations, then folds these into the job store's
step-time model of its device kind (app.style.jobs.StepTimes), which any API process reads for `eta_s`.
"""
from __future__ import annotations

import io
import logging
import os
import time
from pathlib import Path

PROGRESS_EVERY_S = 0.2  # progress/losses written at most this often (and always at the first and last step)
PREVIEW_EVERY_S = 1.0  # a preview PNG at most this often
PRESET_MAX_PIXELS = 100_000_000  # the shipped paintings are trusted; MAX_IMAGE_PIXELS is for uploads
TIMING_FLUSH_S = 2.0  # measured step times reach the job store at least this often during a job
# Warm-up: (longest side, evaluations) per device type, after one throwaway run (first-call allocations, cuDNN's
# algorithm search); two sizes so the model has a slope from the start. Single-scale (fewer than 4 steps).
WARMUP_RUNS = {"cpu": ((64, 3), (128, 3)), "cuda": ((256, 3), (768, 3))}

logger = logging.getLogger("app.style.runner")


class ParentGone(Exception):
    """The API process died: leave the job for the next server start."""


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
        self.device_key = "cpu"
        self.job_waiting = lambda: False  # True when a job arrived: the warm-up gives way to it

    def load_engine(self, device_name: str, vgg_weights: str, torch_threads: int = 0, nice: int = 0,
                    weights_dir: str | None = None) -> None:
        """Lower this process's priority by `nice` (WORKER_NICE), load VGG-19 on the device, then measure it
        (warm_up). A failure is kept in load_error: every job this worker takes then fails with it. The style
        decoder of init=instant is looked up in weights_dir, then beside vgg_weights, on the first such job."""
        import torch

        from app.serving.loading import resolve_device
        from app.style.engine import StyleEngine
        from app.style.eta import device_key

        if nice > 0:
            # The API's predicts come first where both compete for the CPU (bench.contention measures the pair).
            os.nice(nice)
        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        started = time.monotonic()
        try:
            device = resolve_device(device_name)
            self.device_key = device_key(device)
            self.engine = StyleEngine(vgg_weights, device, decoder_dirs=[weights_dir] if weights_dir else None)
        except Exception as exc:
            self.load_error = f"the style engine could not be loaded: {exc}"
            logger.error("worker %s: %s", self.id, self.load_error)
            return
        loaded = time.monotonic()
        self.warm_up()
        logger.info("worker %s (pid %d) ready on %s in %.1f s (VGG %.1f s, warm-up %.1f s)", self.id, os.getpid(),
                    device, time.monotonic() - started, loaded - started, time.monotonic() - loaded)

    def warm_up(self) -> None:
        """A throwaway tiny run, then timed runs at two sizes, recorded as this device's first measurements.
        Gives way to a job that arrives meanwhile (what was timed is kept; the job's own steps are measured
        too) and stops when the process is asked to stop; a failure is logged, never fatal."""
        import numpy as np
        from PIL import Image

        from app.style.engine import StyleCancelled
        from app.style.options import StyleParams

        rng = np.random.default_rng(0)
        content = Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), "RGB")
        style = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB")
        runs = WARMUP_RUNS["cuda" if self.engine.device.type == "cuda" else "cpu"]
        samples = []

        def give_way() -> bool:
            return self.stopping() or self.job_waiting()

        try:
            self.engine.run(content, [style], StyleParams(size=64, steps=1, seed=0), should_stop=give_way)
            for size, steps in runs:
                timer = StepTimer(content.size, size)
                try:
                    self.engine.run(content, [style], StyleParams(size=size, steps=steps, seed=0),
                                    on_progress=timer.tick, should_stop=give_way)
                finally:
                    samples += timer.take_samples(force=True)
        except StyleCancelled:
            logger.info("worker %s: warm-up cut short (%s)", self.id,
                        "stopping" if self.stop_reason() else "a job arrived")
        except ParentGone:
            raise
        except Exception:
            logger.exception("worker %s: warm-up failed (time estimates start from defaults)", self.id)
        if not samples:
            return
        try:
            self.store.record_step_times(self.device_key, samples)
        except Exception:
            logger.exception("worker %s: warm-up measurements not recorded", self.id)
            return
        logger.info("worker %s: %s measured: %s", self.id, self.device_key,
                    ", ".join(f"{mpx * 1e6:.0f} px {seconds / evals * 1000:.1f} ms/step"
                              for mpx, evals, seconds in samples))

    def stop_reason(self) -> bool:
        try:
            return self.stopping()
        except ParentGone:
            return True

    def record_times(self, samples, head_s: float | None = None, tail_s: float | None = None) -> None:
        """Measurements into the store's model; never fails a job (an estimate is not worth a result)."""
        if not samples and head_s is None and tail_s is None:
            return
        try:
            self.store.record_step_times(self.device_key, samples, head_s, tail_s)
        except Exception as exc:
            logger.debug("worker %s: step times not recorded: %s", self.id, exc)

    def run(self, job) -> None:
        from preprocessing.errors import InputError
        from app.style.engine import StyleCancelled
        from app.style.options import StyleInputError

        started = time.monotonic()
        logger.info("worker %s: job %s started (attempt %d)", self.id, job.id, job.attempts)
        try:
            if self.engine is None:
                self.store.fail(job.id, self.load_error or "the style engine is not available", self.id)
                return
            content, styles, params = self.inputs(job)
            timer = StepTimer(content.size, params.output_size(self.engine.device), started)
            progress = _Progress(self, job.id, timer)
            done = False
            try:
                image = self.engine.run(content, styles, params, on_progress=progress,
                                        should_stop=progress.should_stop)
                done = self.store.finish(job.id, png_bytes(image), progress.last_losses, self.id)
            finally:  # what was measured counts, whatever the outcome; the fixed costs only of a whole run
                ended = time.monotonic()
                whole = done and timer.last_t is not None
                self.record_times(timer.take_samples(force=True), timer.head_excluding_evals() if whole else None,
                                  ended - timer.last_t if whole else None)
            logger.info("worker %s: job %s %s in %.1f s", self.id, job.id, "succeeded" if done else "was cancelled",
                        ended - started)
        except StyleCancelled:
            if self.stopping() and not self.store.should_stop(job.id, self.id):
                self.store.release(self.id, job.id)  # shutdown, not a cancel: run it again later
                logger.info("worker %s: job %s handed back to the queue (shutdown)", self.id, job.id)
            else:
                self.store.mark_cancelled(job.id, self.id)
                logger.info("worker %s: job %s cancelled", self.id, job.id)
        except InputError as exc:  # an input that no longer decodes (validated at submit, so rare)
            self.store.fail(job.id, f"bad input: {exc.message}", self.id)
        except StyleInputError as exc:  # options the engine refuses (layers a partial VGG lacks, a diverged loss)
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
            # The traceback goes to the log; the job's error is for its user, who cannot act on library internals.
            logger.exception("worker %s: job %s failed", self.id, job.id)
            message = (f"style transfer failed with an internal error (logged on the server with job id {job.id}); "
                       "retry, or report it with the job id")
        self.store.fail(job.id, message, self.id)

    def inputs(self, job):
        from preprocessing.decoding import open_image
        from app.style.options import StyleParams
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

    def __init__(self, runner: JobRunner, job_id: str, timer: "StepTimer | None" = None):
        self.runner = runner
        self.job_id = job_id
        self.timer = timer
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

        if self.timer is not None:
            self.timer.tick(info)
            if self.timer.due():
                self.runner.record_times(self.timer.take_samples())
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


class StepTimer:
    """Times a run's evaluations from its progress callbacks: the gaps between two callbacks of one scale are
    evaluations (with what the worker does between them: progress writes, previews), grouped into samples
    (megapixels, evaluations, seconds); the gaps before each scale's first callback are the run's fixed cost."""

    def __init__(self, content_size: tuple[int, int], size: int, started: float | None = None):
        from app.style.options import fit_size

        self.out = fit_size(*content_size, size)
        self.started = time.monotonic() if started is None else started
        self.last_t: float | None = None
        self.stage: int | None = None
        self.gaps = 0.0  # start -> first callback, and every scale change: fixed costs plus one evaluation each
        self.gap_mpx: list[float] = []
        self.per_stage: dict[float, list[float]] = {}  # mpx -> [evaluations, seconds] over the whole run
        self.chunk: list = [0.0, 0, 0.0]  # the stretch not yet taken: mpx, evaluations, seconds
        self.chunk_since = self.started
        self.samples: list[tuple[float, int, float]] = []

    def _mpx(self, scale_px: int) -> float:
        from app.style.options import fit_size

        w, h = fit_size(*self.out, scale_px) if scale_px else self.out
        return w * h / 1e6

    def tick(self, info) -> None:
        t = time.monotonic()
        mpx = self._mpx(info.scale_px)
        if self.last_t is None or info.stage != self.stage:
            self.gaps += t - (self.started if self.last_t is None else self.last_t)
            self.gap_mpx.append(mpx)
            self._close_chunk()
            self.chunk, self.chunk_since = [mpx, 0, 0.0], t
        else:
            dt = t - self.last_t
            self.chunk[1] += 1
            self.chunk[2] += dt
            stats = self.per_stage.setdefault(mpx, [0, 0.0])
            stats[0] += 1
            stats[1] += dt
        self.last_t, self.stage = t, info.stage

    def _close_chunk(self) -> None:
        if self.chunk[1] > 0:
            self.samples.append((self.chunk[0], self.chunk[1], self.chunk[2]))
        self.chunk = [self.chunk[0], 0, 0.0]

    def due(self) -> bool:
        return time.monotonic() - self.chunk_since >= TIMING_FLUSH_S and (self.chunk[1] > 0 or bool(self.samples))

    def take_samples(self, force: bool = False) -> list[tuple[float, int, float]]:
        if force or self.due():
            self._close_chunk()
            self.chunk_since = time.monotonic()
        samples, self.samples = self.samples, []
        return samples

    def head_excluding_evals(self) -> float:
        """The fixed cost of the run: its gaps less the one evaluation inside each (priced at this run's own
        measured rate for that scale)."""
        evals = 0.0
        for mpx in self.gap_mpx:
            n, seconds = self.per_stage.get(mpx, (0, 0.0))
            evals += seconds / n if n else 0.0
        return max(0.0, self.gaps - evals)


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()
