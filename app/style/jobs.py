"""Style-transfer jobs: the record, its life, the exceptions and the JobStore protocol every store implements.

Life of a job:  queued -> running -> succeeded | failed | cancelled   (queued -> cancelled too)

* submit() stores a queued job (refused with QueueFull when MAX_QUEUED_JOBS are queued, or the owner's share).
* A worker claims the oldest queued job, stamped with its worker id and attempts + 1; while it runs the worker
  writes progress, losses and a preview and polls should_stop() each step.
* cancel() of a queued job finishes it at once; of a running job it marks it cancelled, which its worker sees at
  its next step. A job left running by a dead process is re-queued while attempts < max_attempts, else failed.
* cleanup() deletes finished jobs older than RESULT_TTL.

Stores: app/style/sqlite_store.py (embedded, one SQLite file in DATA_DIR), app/style/redis_store.py (distributed).
The time estimates built from the stores' measurements are app/style/eta.py.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from app.style.eta import StepTimes

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINISHED = (SUCCEEDED, FAILED, CANCELLED)

DB_NAME = "jobs.sqlite3"
JOBS_DIRNAME = "jobs"
RESULT_FILE = "result.png"
PREVIEW_FILE = "preview.png"
DEFAULT_MAX_ATTEMPTS = 2  # a job interrupted by a dead process is re-queued once, then failed
BUSY_TIMEOUT_S = 10.0
ORPHAN_DIR_AGE_S = 3600.0  # a job directory without a row (a crash mid-submit) is removed after this long

SERVER_STOPPED = "the server stopped while this job was running"
WORKER_DIED = "the worker process running this job died"


class QueueFull(Exception):
    """MAX_QUEUED_JOBS jobs are already waiting (or, with `owner`, MAX_QUEUED_JOBS_PER_OWNER of that owner's)."""

    def __init__(self, queued: int, limit: int, owner: str | None = None):
        setting = "MAX_QUEUED_JOBS_PER_OWNER" if owner else "MAX_QUEUED_JOBS"
        super().__init__(f"{queued} jobs are queued; the limit is {limit} ({setting})")
        self.queued = queued
        self.limit = limit
        self.owner = owner


class JobStoreUnavailable(Exception):
    """The job store cannot be reached (Redis down or restarting): job routes answer 503, and recover by themselves."""


class JobStoreFull(Exception):
    """The job store refused a write for lack of space (Redis at maxmemory): 507."""


def now() -> float:
    return time.time()


def iso(ts: float | None) -> str | None:
    """Epoch seconds -> ISO 8601 UTC with a Z, millisecond precision."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_job_id() -> str:
    return secrets.token_urlsafe(16)  # 128 random bits: unguessable, URL-safe


def job_inputs(content: tuple[str, bytes], styles: list[dict], content_size: tuple[int, int] | None = None) -> dict:
    """The `inputs` of a job record: file names and presets, without the uploaded bytes, and the content photo's
    (width, height) when known (the time estimate needs the output's pixel count)."""
    inputs: dict[str, Any] = {"content": content[0],
                              "styles": [{k: v for k, v in s.items() if k != "data"} for s in styles]}
    if content_size is not None:
        inputs["content_size"] = [int(content_size[0]), int(content_size[1])]
    return inputs


@dataclass
class Job:
    id: str
    status: str
    params: dict[str, Any]
    inputs: dict[str, Any]  # {"content": filename, "styles": [{"file": filename} | {"preset": name}, ...]}
    created_at: float
    total: int
    step: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    losses: dict[str, float] | None = None
    error: str | None = None
    attempts: int = 0
    cancel_requested: bool = False
    worker: str | None = None
    has_preview: bool = False
    queue_position: int | None = None  # 1-based while queued
    seq: int = 0
    owner: str | None = None  # the API key name that submitted it (None without API_KEYS)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def fraction(self) -> float:
        return round(self.step / self.total, 4) if self.total else 0.0


@runtime_checkable
class JobStore(Protocol):
    """What the API and a JobRunner need from a job store. How a worker gets its next job, and how the jobs of a
    dead process are recovered, belong to each backend (SQLiteJobStore.claim/recover_*, RedisJobStore.claim_job/
    recover_dead_workers).

    The contract both stores keep (tests/test_job_store_contract.py runs it over each):

    * submit() refuses with QueueFull(queued, max_queued, owner=None) when `max_queued` jobs are queued, else,
      for an `owner` (not None) with max_queued_per_owner > 0, with QueueFull(mine, max_queued_per_owner, owner)
      when that many of the owner's are queued; the queue is checked first. Only queued jobs count; jobs without
      an owner are never held to the per-owner cap. A refused submit leaves nothing stored.
    * `owner=None` in list() and count() means every job (owned or not); a name means that owner's jobs only
      (never those submitted without an owner). list() is newest first with the total of the same selection.
    * count(status, owner) knows every status in STATUSES and raises ValueError for anything else. Queued and
      running counts are cheap in both stores (the API reads them on every submit, /metrics on every scrape); a
      finished status is counted over the finished jobs kept (RESULT_TTL), which in Redis reads each of them.
    * queue_position is 1-based over the whole queue (whoever owns the jobs), None unless queued.
    * A worker's writes (update_progress, finish, fail, mark_cancelled) apply only while the job runs and, with
      `worker` given, only on that worker; they answer False otherwise and change nothing. cancel() answers the
      job (unchanged once finished; None when unknown); delete() removes a finished job and its files from every
      listing (False when unknown) and refuses an unfinished one with ValueError; cleanup(ttl_s) does the same for
      jobs finished more than ttl_s ago and answers how many.
    * read_file() gives a job's inputs while it waits or runs, the preview while it runs, the result once it
      succeeded, None for anything absent. Whether the inputs stay readable once a job finished is the store's
      (Redis drops them at once, SQLite with the job).
    * Where a released or recovered job goes back in the queue is the store's (SQLite: its old place, Redis: the
      back); either way it keeps its owner.
    """

    def read_file(self, job_id: str, name: str) -> bytes | None: ...
    def submit(self, params: dict, total: int, content: tuple[str, bytes], styles: list[dict],
               max_queued: int, job_id: str | None = None, content_size: tuple[int, int] | None = None,
               owner: str | None = None, max_queued_per_owner: int = 0) -> Job: ...
    def get(self, job_id: str) -> Job | None: ...
    def list(self, limit: int, offset: int, owner: str | None = None) -> tuple[list[Job], int]: ...
    def count(self, status: str, owner: str | None = None) -> int: ...
    def cancel(self, job_id: str) -> Job | None: ...
    def delete(self, job_id: str) -> bool: ...
    def should_stop(self, job_id: str, worker: str | None = None) -> bool: ...
    def update_progress(self, job_id: str, step: int, total: int, losses: dict | None,
                        preview_png: bytes | None = None, worker: str | None = None) -> bool: ...
    def finish(self, job_id: str, result_png: bytes, losses: dict | None = None,
               worker: str | None = None) -> bool: ...
    def fail(self, job_id: str, error: str, worker: str | None = None) -> bool: ...
    def mark_cancelled(self, job_id: str, worker: str | None = None) -> bool: ...
    def release(self, worker: str, job_id: str | None = None) -> list[str]: ...
    def cleanup(self, ttl_s: float) -> int: ...
    def mean_run_seconds(self) -> float | None: ...
    def finished_since(self, since: float) -> list[tuple[str, str, float | None, float]]: ...
    def active_jobs(self) -> list[Job]: ...
    def step_times(self) -> dict[str, StepTimes]: ...
    def record_step_times(self, device: str, samples: list[tuple[float, int, float]],
                          head_s: float | None = None, tail_s: float | None = None) -> None: ...
    def close(self) -> None: ...
