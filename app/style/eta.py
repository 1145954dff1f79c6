"""Time estimates of style jobs: a per-device cost model measured by the workers (StepTimes) and the queue
simulation behind `eta_s` and GET /v1/style/estimate (EtaBoard).

A job's run time is modelled per device kind ("cpu", "cuda:NVIDIA H200", ...), from measurements only:
    seconds = head + sum over its scales of evaluations x (a + b x megapixels of that scale) + tail
a (s per evaluation) and b (s per megapixel-evaluation) are fitted by exponentially weighted least squares over
every measured stretch of evaluations (the workers' warm-up at start, then every job's progress), so the model
follows the device as it is now (other load on it included). head (reading the inputs, building the targets of
each scale) and tail (encoding and storing the result) are exponentially weighted means over finished jobs.
"""
from __future__ import annotations

from dataclasses import dataclass

from app.style.jobs import QUEUED, RUNNING, Job, now

STEP_HALF_LIFE_EVALS = 300.0  # what the model knew weighs half after this many newer evaluations were measured
OVERHEAD_ALPHA = 0.3  # weight of the newest job in head/tail
OWN_PACE_CLAMP = 4.0  # a running job's own pace scales the model's price of its remaining steps at most this much
MIN_X_SPREAD = 0.15  # relative spread of the measured megapixels below which only the level (not the slope) is fitted
# Used only until a device has measured anything (the API asked before any worker warmed up): the README's
# figures (this 2-core CPU: about 0.12 s per evaluation at 256 px; an H100: about 12 ms at 512 px).
PRIOR_STEP_TIMES = {"cpu": (0.01, 1.6, 0.3, 0.05), "cuda": (0.004, 0.03, 0.2, 0.02)}  # a, b, head, tail


def device_key(device) -> str:
    """The name the step-time model of a device is kept under: its type, and the GPU model for CUDA."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        try:
            return f"cuda:{torch.cuda.get_device_name(device)}"
        except Exception:  # no CUDA in this process: the type still separates it from the CPU
            return "cuda"
    return device.type


@dataclass
class StepTimes:
    """The measured cost model of one device kind (see above); stored as a dict in the job store."""

    w: float = 0.0  # weighted evaluations, and the weighted sums of x = megapixels and y = seconds per evaluation
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0
    head_s: float | None = None
    tail_s: float | None = None
    evals: int = 0  # evaluations measured in all
    jobs: int = 0  # finished jobs whose head/tail were measured
    updated_at: float = 0.0
    prior: str = "cpu"  # which PRIOR_STEP_TIMES row stands in for what was not measured yet

    @classmethod
    def from_dict(cls, data: dict) -> "StepTimes":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @classmethod
    def unmeasured(cls, device: str) -> "StepTimes":
        return cls(prior="cuda" if device.startswith("cuda") else "cpu")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @property
    def measured(self) -> bool:
        return self.w > 0

    def observe(self, mpx: float, evals: int, seconds: float) -> None:
        """`evals` consecutive evaluations at `mpx` megapixels took `seconds`."""
        if evals <= 0 or seconds <= 0 or mpx <= 0:
            return
        decay = 0.5 ** (evals / STEP_HALF_LIFE_EVALS)
        y = seconds / evals
        self.w = self.w * decay + evals
        self.sx = self.sx * decay + evals * mpx
        self.sy = self.sy * decay + evals * y
        self.sxx = self.sxx * decay + evals * mpx * mpx
        self.sxy = self.sxy * decay + evals * mpx * y
        self.evals += evals
        self.updated_at = now()

    def observe_overhead(self, head_s: float | None, tail_s: float | None) -> None:
        if head_s is not None:
            head_s = max(0.0, head_s)
            self.head_s = head_s if self.head_s is None else self.head_s + OVERHEAD_ALPHA * (head_s - self.head_s)
        if tail_s is not None:
            tail_s = max(0.0, tail_s)
            self.tail_s = tail_s if self.tail_s is None else self.tail_s + OVERHEAD_ALPHA * (tail_s - self.tail_s)
            self.jobs += 1
        self.updated_at = now()

    def observe_all(self, samples, head_s: float | None = None, tail_s: float | None = None) -> None:
        for mpx, evals, seconds in samples:
            self.observe(float(mpx), int(evals), float(seconds))
        self.observe_overhead(head_s, tail_s)

    def coefficients(self) -> tuple[float, float]:
        """(a, b): seconds per evaluation = a + b x megapixels."""
        prior_a, prior_b = PRIOR_STEP_TIMES[self.prior][:2]
        if self.w <= 0:
            return prior_a, prior_b
        mx, my = self.sx / self.w, self.sy / self.w
        vx = max(0.0, self.sxx / self.w - mx * mx)
        if vx ** 0.5 < MIN_X_SPREAD * mx:  # one size measured: keep the prior's shape, scaled to the measured level
            scale = my / (prior_a + prior_b * mx)
            return prior_a * scale, prior_b * scale
        b = (self.sxy / self.w - mx * my) / vx
        a = my - b * mx
        if b <= 0:  # noise (another load on the machine) bigger than the size effect: the prior's shape again
            scale = my / (prior_a + prior_b * mx)
            return prior_a * scale, prior_b * scale
        if a < 0:  # through the origin
            return 0.0, self.sxy / self.sxx
        return a, b

    def per_eval(self, mpx: float) -> float:
        a, b = self.coefficients()
        return a + b * mpx

    @property
    def head(self) -> float:
        return self.head_s if self.head_s is not None else PRIOR_STEP_TIMES[self.prior][2]

    @property
    def tail(self) -> float:
        return self.tail_s if self.tail_s is not None else PRIOR_STEP_TIMES[self.prior][3]


def job_stages(size: int, steps: int, content_size: tuple[int, int] | None = None) -> list[tuple[float, int]]:
    """[(megapixels, evaluations)] of each scale the engine will optimise at (its own schedule and sizes; a
    square photo when the content size is unknown, the most pixels a size can have)."""
    from app.style.options import fit_size, schedule

    out_w, out_h = fit_size(*content_size, size) if content_size else (size, size)
    stages = []
    for longest, evals in schedule(size, steps):
        w, h = fit_size(out_w, out_h, longest)
        stages.append((w * h / 1e6, evals))
    return stages


def _content_size(job: Job) -> tuple[int, int] | None:
    size = job.inputs.get("content_size")
    return (int(size[0]), int(size[1])) if size else None


def _job_run_seconds(model: StepTimes, job: Job, done: int = 0, elapsed: float = 0.0) -> float:
    stages = job_stages(job.params["size"], job.total, _content_size(job))
    return run_seconds(model, stages, done, elapsed, styles=len(job.inputs.get("styles") or ()) or 1)


def run_seconds(model: StepTimes, stages: list[tuple[float, int]], done: int = 0, elapsed: float = 0.0,
                styles: int = 1) -> float:
    """Seconds left of a run of `stages` that has done `done` evaluations and been running `elapsed` seconds.
    Each style image beyond the first adds its targets at every scale: one forward pass, about a third of an
    evaluation (forward and backward), priced at the scale's measured rate."""
    left = model.tail
    if done <= 0:
        extra = max(0, styles - 1) * sum(model.per_eval(mpx) for mpx, _ in stages) / 3
        left += max(0.0, model.head + extra - elapsed)
    total_evals = sum(n for _, n in stages)
    done_cost = todo_cost = 0.0
    counted = done
    for mpx, evals in stages:
        finished = max(0, min(evals, counted))
        counted -= evals
        done_cost += finished * model.per_eval(mpx)
        todo_cost += (evals - finished) * model.per_eval(mpx)
    factor = 1.0
    if done > 0 and done_cost > 0 and elapsed > 0:
        # The job's own pace is the best guide to its rest: the measured model, scaled by how fast its own steps
        # went so far, trusted fully once a quarter of the steps are done.
        ratio = min(OWN_PACE_CLAMP, max(1 / OWN_PACE_CLAMP, max(1e-3, elapsed - model.head) / done_cost))
        trust = min(1.0, 4.0 * done / max(1, total_evals))
        factor = 1.0 + trust * (ratio - 1.0)
    return left + factor * todo_cost


class EtaBoard:
    """The time estimates of one moment: each worker's queue of work simulated in queue order (FIFO; a job goes
    to whichever worker is free first), each run priced with the step-time model of the device that runs it.

    `workers` are (worker id, device key) of the workers that will take jobs; none means nothing will run."""

    def __init__(self, active: list[Job], workers: list[tuple[str, str]], models: dict[str, StepTimes],
                 at: float | None = None):
        self.at = now() if at is None else at
        self.models = models
        self.workers = workers
        self.eta: dict[str, float] = {}
        self.status = {job.id: job.status for job in active}
        devices = dict(workers)
        free = {worker: 0.0 for worker, _ in workers}
        self.queued = 0
        for job in active:
            if job.status == RUNNING:
                model = self.model(devices.get(job.worker or "", self._any_device()))
                elapsed = max(0.0, self.at - (job.started_at or self.at))
                left = _job_run_seconds(model, job, job.step, elapsed)
                self.eta[job.id] = left
                if job.worker in free:
                    free[job.worker] = max(free[job.worker], left)
        # when the first queued job starts (a place in a full queue opens): the first worker to be free
        self.next_start_s = min(free.values()) if free else None
        for job in active:
            if job.status == QUEUED:
                self.queued += 1
                if not free:
                    continue
                worker = min(free, key=free.get)
                own = _job_run_seconds(self.model(devices[worker]), job)
                free[worker] += own
                self.eta[job.id] = free[worker]
        self.free = free

    def _any_device(self) -> str:
        return self.workers[0][1] if self.workers else (next(iter(self.models), "cpu"))

    def model(self, device: str) -> StepTimes:
        return self.models.get(device) or StepTimes.unmeasured(device)

    def for_job(self, job: Job) -> float | None:
        """Seconds until `job` finishes (queue included); None once it finished or when no worker will run it."""
        if job.finished:
            return None
        if job.id in self.eta and job.status == self.status.get(job.id):
            return round(self.eta[job.id], 2)
        if job.status == RUNNING:  # started after this board was made: its own remaining run
            devices = dict(self.workers)
            model = self.model(devices.get(job.worker or "", self._any_device()))
            return round(_job_run_seconds(model, job, job.step, max(0.0, now() - (job.started_at or now()))), 2)
        if job.status == QUEUED and self.free:  # queued after this board was made: at the back
            worker = min(self.free, key=self.free.get)
            own = _job_run_seconds(self.model(dict(self.workers)[worker]), job)
            return round(self.free[worker] + own, 2)
        return None

    def estimate(self, size: int, steps: int, content_size: tuple[int, int] | None = None, styles: int = 1) -> dict:
        """A job submitted now, at the back of the queue."""
        stages = job_stages(size, steps, content_size)
        if self.free:
            worker = min(self.free, key=self.free.get)
            wait, device = self.free[worker], dict(self.workers)[worker]
        else:
            wait, device = 0.0, self._any_device()
        model = self.model(device)
        run = run_seconds(model, stages, styles=styles)
        evals = sum(n for _, n in stages)
        step_s = sum(n * model.per_eval(mpx) for mpx, n in stages) / max(1, evals)
        return {"eta_s": round(wait + run, 2), "queued_ahead": self.queued, "seconds_per_step": round(step_s, 5),
                "wait_s": round(wait, 2), "run_s": round(run, 2), "workers": len(self.workers), "device": device,
                "measured": model.measured}
