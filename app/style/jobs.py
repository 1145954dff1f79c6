"""Style-transfer job records, the queue interface and its embedded SQLite implementation.

A job's record lives in one row of DATA_DIR/jobs.sqlite3; its files (the uploaded images, the latest preview,
the result) live in DATA_DIR/jobs/<id>/ and are written atomically (temp file + rename).

Life of a job:  queued -> running -> succeeded | failed | cancelled   (queued -> cancelled too)

* submit() inserts a queued row (refused with QueueFull when MAX_QUEUED_JOBS are already queued).
* A worker claim()s the oldest queued job in one IMMEDIATE transaction, so two workers never get the same job,
  and stamps it with its worker id and attempts + 1.
* While it runs the worker writes progress/losses/preview (update_progress) and polls should_stop() each step.
* cancel() of a queued job finishes it at once; of a running job it marks it cancelled and sets
  cancel_requested, which the worker sees at its next step (every later write by the worker is ignored).
* recover_orphans()/recover_worker(): a job left running by a dead process is re-queued (keeping its place)
  while attempts < max_attempts, else failed with a message saying the server stopped.
* cleanup() deletes finished jobs (row and files) older than RESULT_TTL.

The queue is used through the JobQueue protocol; app/style/redis_queue.py is the distributed implementation.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

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


class JobNotFound(KeyError):
    pass


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
class JobQueue(Protocol):
    """What the API and a JobRunner need from a job store. How a worker gets its next job, and how the jobs of a
    dead process are recovered, belong to each backend (SQLiteJobQueue.claim/recover_*, RedisJobQueue.claim_job/
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


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    params TEXT NOT NULL,
    inputs TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL,
    losses TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    has_preview INTEGER NOT NULL DEFAULT 0,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status_seq ON jobs (status, seq);
CREATE INDEX IF NOT EXISTS jobs_finished_at ON jobs (finished_at);
CREATE TABLE IF NOT EXISTS step_times (
    device TEXT PRIMARY KEY,
    model TEXT NOT NULL
);
"""

_COLUMNS = ("seq, id, status, params, inputs, created_at, started_at, finished_at, step, total, losses, error, "
            "attempts, cancel_requested, worker, has_preview, owner")


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync-free, then rename over `path` (readers never see a part)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with _suppress_os_error():
            os.unlink(tmp)
        raise


class _suppress_os_error:
    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        return kind is not None and issubclass(kind, OSError)


class _suppress_sqlite_error:
    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        return kind is not None and issubclass(kind, sqlite3.Error)


class SQLiteJobQueue:
    """The embedded default: one SQLite file in WAL mode, short transactions, one connection per thread/process."""

    def __init__(self, data_dir: Path, max_attempts: int = DEFAULT_MAX_ATTEMPTS):
        self.data_dir = Path(data_dir)
        self.db_path = self.data_dir / DB_NAME
        self.files_dir = self.data_dir / JOBS_DIRNAME
        self.max_attempts = max_attempts
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []  # every thread's connection, closed together by close()
        self._opened_lock = threading.Lock()
        conn = self._connect_new()
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            columns = {row["name"] for row in conn.execute("PRAGMA table_info(jobs)")}
            if "owner" not in columns:  # a DATA_DIR written before jobs had owners
                conn.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")
            conn.execute("CREATE INDEX IF NOT EXISTS jobs_owner_seq ON jobs (owner, seq)")
        finally:
            conn.close()

    # ------------------------------------------------------------------ connections

    def _connect_new(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; a power cut may lose the last commits only
        conn.row_factory = sqlite3.Row
        return conn

    @property
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = self._local.conn = self._connect_new()
            self._local.pid = os.getpid()
            with self._opened_lock:
                self._opened.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection this store opened (in any thread); a later call opens a new one."""
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            with _suppress_sqlite_error():
                conn.close()
        self._local = threading.local()

    def _write(self):
        """A short IMMEDIATE transaction (takes the write lock at once, so read-then-write is atomic)."""
        return _Transaction(self._conn)

    # ------------------------------------------------------------------ files

    def job_dir(self, job_id: str) -> Path:
        if not job_id or "/" in job_id or job_id.startswith("."):
            raise ValueError(f"bad job id {job_id!r}")
        return self.files_dir / job_id

    def read_file(self, job_id: str, name: str) -> bytes | None:
        """One of a job's files (an input, the preview, the result); None when it is not there."""
        try:
            return (self.job_dir(job_id) / name).read_bytes()
        except (OSError, ValueError):
            return None

    def _remove_files(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    # ------------------------------------------------------------------ rows

    def _row_to_job(self, row: sqlite3.Row) -> Job:
        return Job(
            id=row["id"], status=row["status"], params=json.loads(row["params"]), inputs=json.loads(row["inputs"]),
            created_at=row["created_at"], started_at=row["started_at"], finished_at=row["finished_at"],
            step=row["step"], total=row["total"], losses=json.loads(row["losses"]) if row["losses"] else None,
            error=row["error"], attempts=row["attempts"], cancel_requested=bool(row["cancel_requested"]),
            worker=row["worker"], has_preview=bool(row["has_preview"]), seq=row["seq"], owner=row["owner"],
        )

    def _with_position(self, job: Job, conn: sqlite3.Connection | None = None) -> Job:
        if job.status == QUEUED:
            conn = conn or self._conn
            job.queue_position = conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = ? AND seq <= ?", (QUEUED, job.seq)).fetchone()[0]
        return job

    # ------------------------------------------------------------------ API side

    def submit(self, params: dict, total: int, content: tuple[str, bytes], styles: list[dict],
               max_queued: int, job_id: str | None = None, content_size: tuple[int, int] | None = None,
               owner: str | None = None, max_queued_per_owner: int = 0) -> Job:
        """Write the input files, then insert the queued row if fewer than `max_queued` jobs are waiting (and,
        for an owner with max_queued_per_owner > 0, fewer than that many of the owner's).

        `content` is (filename, bytes); each style is {"preset": name} or {"file": filename, "data": bytes}."""
        job_id = job_id or new_job_id()
        folder = self.job_dir(job_id)
        folder.mkdir(parents=True)
        try:
            atomic_write(folder / content[0], content[1])
            for style in styles:
                if "data" in style:
                    atomic_write(folder / style["file"], style["data"])
            inputs = job_inputs(content, styles, content_size)
            with self._write() as conn:
                queued = conn.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (QUEUED,)).fetchone()[0]
                if queued >= max_queued:
                    raise QueueFull(queued, max_queued)
                if owner is not None and max_queued_per_owner > 0:
                    mine = conn.execute("SELECT COUNT(*) FROM jobs WHERE status = ? AND owner = ?",
                                        (QUEUED, owner)).fetchone()[0]
                    if mine >= max_queued_per_owner:
                        raise QueueFull(mine, max_queued_per_owner, owner)
                conn.execute(
                    "INSERT INTO jobs (id, status, params, inputs, created_at, total, owner) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (job_id, QUEUED, json.dumps(params), json.dumps(inputs), now(), int(total), owner))
                row = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
                return self._with_position(self._row_to_job(row), conn)
        except BaseException:
            self._remove_files(job_id)
            raise

    def get(self, job_id: str) -> Job | None:
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._with_position(self._row_to_job(row)) if row else None

    def list(self, limit: int, offset: int, owner: str | None = None) -> tuple[list[Job], int]:
        """Newest first, and the total number of jobs (of `owner` only, when given)."""
        where, args = ("WHERE owner = ?", (owner,)) if owner is not None else ("", ())
        conn = self._conn
        conn.execute("BEGIN")  # one snapshot for the page and the total
        try:
            total = conn.execute(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()[0]
            rows = conn.execute(f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY seq DESC LIMIT ? OFFSET ?",
                                (*args, limit, offset)).fetchall()
            jobs = [self._with_position(self._row_to_job(row), conn) for row in rows]
        finally:
            conn.execute("COMMIT")
        return jobs, total

    def count(self, status: str, owner: str | None = None) -> int:
        """Jobs in `status` (any of STATUSES; ValueError otherwise), of `owner` only when given."""
        if status not in STATUSES:
            raise ValueError(f"count() knows {', '.join(STATUSES)}, not {status!r}")
        if owner is None:
            return self._conn.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (status,)).fetchone()[0]
        return self._conn.execute("SELECT COUNT(*) FROM jobs WHERE status = ? AND owner = ?",
                                  (status, owner)).fetchone()[0]

    def cancel(self, job_id: str) -> Job | None:
        """Queued or running -> cancelled (a running job's worker stops at its next step). None when unknown;
        a finished job is returned unchanged."""
        with self._write() as conn:
            conn.execute(
                "UPDATE jobs SET status = ?, cancel_requested = 1, finished_at = ? WHERE id = ? AND status IN (?, ?)",
                (CANCELLED, now(), job_id, QUEUED, RUNNING))
            row = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._row_to_job(row) if row else None

    def delete(self, job_id: str) -> bool:
        """Remove a finished job's row and files; False when unknown. Refuses (ValueError) an unfinished job."""
        with self._write() as conn:
            row = conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return False
            if row["status"] not in FINISHED:
                raise ValueError(f"job {job_id} is {row['status']}; cancel it first")
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        self._remove_files(job_id)
        return True

    def mean_run_seconds(self, last: int = 20) -> float | None:
        row = self._conn.execute(
            "SELECT AVG(finished_at - started_at) FROM (SELECT finished_at, started_at FROM jobs "
            "WHERE status = ? AND started_at IS NOT NULL ORDER BY seq DESC LIMIT ?)", (SUCCEEDED, last)).fetchone()
        return row[0]

    def finished_since(self, since: float) -> list[tuple[str, str, float | None, float]]:
        """(id, status, started_at, finished_at) of jobs finished after `since` (epoch s), for the metrics."""
        rows = self._conn.execute(
            "SELECT id, status, started_at, finished_at FROM jobs WHERE status IN (?, ?, ?) AND finished_at > ?",
            (*FINISHED, since)).fetchall()
        return [(row[0], row[1], row[2], row[3]) for row in rows]

    def active_jobs(self) -> list[Job]:
        """Every running job, then every queued job in queue order (one snapshot), for the time estimates."""
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE status IN (?, ?) ORDER BY seq",
                                  (RUNNING, QUEUED)).fetchall()
        jobs = [self._row_to_job(row) for row in rows]
        queued = [job for job in jobs if job.status == QUEUED]
        for position, job in enumerate(queued, 1):
            job.queue_position = position
        return [job for job in jobs if job.status == RUNNING] + queued

    def step_times(self) -> dict[str, StepTimes]:
        """The measured step-time model of each device kind that ran jobs on this DATA_DIR."""
        rows = self._conn.execute("SELECT device, model FROM step_times").fetchall()
        return {row["device"]: StepTimes.from_dict(json.loads(row["model"])) for row in rows}

    def record_step_times(self, device: str, samples: list[tuple[float, int, float]],
                          head_s: float | None = None, tail_s: float | None = None) -> None:
        """Fold measured (megapixels, evaluations, seconds) samples and a job's fixed costs into `device`'s model
        (read-modify-write in one IMMEDIATE transaction: workers updating it at once do not lose samples)."""
        with self._write() as conn:
            row = conn.execute("SELECT model FROM step_times WHERE device = ?", (device,)).fetchone()
            model = StepTimes.from_dict(json.loads(row["model"])) if row else StepTimes.unmeasured(device)
            model.observe_all(samples, head_s, tail_s)
            conn.execute("INSERT INTO step_times (device, model) VALUES (?, ?) ON CONFLICT(device) DO UPDATE "
                         "SET model = excluded.model", (device, json.dumps(model.to_dict())))

    # ------------------------------------------------------------------ worker side

    def claim(self, worker: str) -> Job | None:
        """The oldest queued job, now running on `worker`; None when nothing is queued."""
        with self._write() as conn:
            row = conn.execute("SELECT seq FROM jobs WHERE status = ? ORDER BY seq LIMIT 1", (QUEUED,)).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET status = ?, started_at = ?, worker = ?, attempts = attempts + 1, step = 0, "
                "losses = NULL, has_preview = 0, cancel_requested = 0 WHERE seq = ?",
                (RUNNING, now(), worker, row["seq"]))
            job = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE seq = ?", (row["seq"],)).fetchone()
        return self._row_to_job(job)

    def should_stop(self, job_id: str, worker: str | None = None) -> bool:
        """True once the job was cancelled, deleted or taken away from `worker` (a cheap indexed read)."""
        row = self._conn.execute("SELECT status, cancel_requested, worker FROM jobs WHERE id = ?",
                                 (job_id,)).fetchone()
        return (row is None or row["status"] != RUNNING or bool(row["cancel_requested"])
                or (worker is not None and row["worker"] != worker))

    @staticmethod
    def _owned(worker: str | None) -> tuple[str, tuple]:
        """The WHERE clause of a worker's writes: the job is still running, and still on this worker."""
        if worker is None:
            return "id = ? AND status = 'running'", ()
        return "id = ? AND status = 'running' AND worker = ?", (worker,)

    def update_progress(self, job_id: str, step: int, total: int, losses: dict | None,
                        preview_png: bytes | None = None, worker: str | None = None) -> bool:
        """False when the job is no longer this worker's running job (cancelled meanwhile): stop."""
        if preview_png is not None:
            if self.should_stop(job_id, worker) or not self._write_running_file(job_id, PREVIEW_FILE, preview_png):
                return False
        where, extra = self._owned(worker)
        with self._write() as conn:
            cursor = conn.execute(
                f"UPDATE jobs SET step = ?, total = ?, losses = ?, has_preview = has_preview OR ? WHERE {where}",
                (int(step), int(total), json.dumps(losses) if losses is not None else None,
                 int(preview_png is not None), job_id, *extra))
        return cursor.rowcount == 1

    def finish(self, job_id: str, result_png: bytes, losses: dict | None = None,
               worker: str | None = None) -> bool:
        """Store the result and mark the job succeeded; False (result discarded) when it was cancelled meanwhile."""
        if self.should_stop(job_id, worker) or not self._write_running_file(job_id, RESULT_FILE, result_png):
            return False
        where, extra = self._owned(worker)
        with self._write() as conn:
            cursor = conn.execute(
                f"UPDATE jobs SET status = ?, finished_at = ?, step = total, losses = COALESCE(?, losses), "
                f"error = NULL WHERE {where}",
                (SUCCEEDED, now(), json.dumps(losses) if losses is not None else None, job_id, *extra))
        if cursor.rowcount != 1:
            with _suppress_os_error():
                (self.job_dir(job_id) / RESULT_FILE).unlink()
            return False
        return True

    def fail(self, job_id: str, error: str, worker: str | None = None) -> bool:
        where, extra = self._owned(worker)
        with self._write() as conn:
            cursor = conn.execute(f"UPDATE jobs SET status = ?, finished_at = ?, error = ? WHERE {where}",
                                  (FAILED, now(), error, job_id, *extra))
        return cursor.rowcount == 1

    def mark_cancelled(self, job_id: str, worker: str | None = None) -> bool:
        """The worker acknowledges a cancel it saw through cancel_requested (normally cancel() did it already)."""
        where, extra = self._owned(worker)
        with self._write() as conn:
            cursor = conn.execute(f"UPDATE jobs SET status = ?, finished_at = ? WHERE {where}",
                                  (CANCELLED, now(), job_id, *extra))
        return cursor.rowcount == 1

    def release(self, worker: str, job_id: str | None = None) -> list[str]:
        """A worker stopped for a shutdown hands its running job(s) back: queued again in their old place, the
        attempt not counted. Returns the ids released."""
        with self._write() as conn:
            where, args = "status = 'running' AND worker = ?", [worker]
            if job_id is not None:
                where += " AND id = ?"
                args.append(job_id)
            ids = [r["id"] for r in conn.execute(f"SELECT id FROM jobs WHERE {where}", args).fetchall()]
            conn.execute(
                f"UPDATE jobs SET status = 'queued', started_at = NULL, worker = NULL, step = 0, losses = NULL, "
                f"has_preview = 0, attempts = MAX(attempts - 1, 0) WHERE {where}", args)
        for released in ids:
            self._remove_preview(released)
        return ids

    def _write_running_file(self, job_id: str, name: str, data: bytes) -> bool:
        """Write a file of a running job; False when its folder is gone (deleted meanwhile)."""
        try:
            atomic_write(self.job_dir(job_id) / name, data)
            return True
        except FileNotFoundError:
            return False

    def _remove_preview(self, job_id: str) -> None:
        with _suppress_os_error():
            (self.job_dir(job_id) / PREVIEW_FILE).unlink()

    # ------------------------------------------------------------------ recovery and retention

    def recover_orphans(self, reason: str = SERVER_STOPPED) -> list[Job]:
        """Every running job belongs to a process that is gone (call at startup, before starting workers)."""
        return self._recover("status = ?", (RUNNING,), reason)

    def recover_worker(self, worker: str, reason: str = WORKER_DIED) -> list[Job]:
        """The running jobs of one dead worker."""
        return self._recover("status = ? AND worker = ?", (RUNNING, worker), reason)

    def _recover(self, where: str, args: tuple, reason: str) -> list[Job]:
        """Re-queue (same place in the queue) while attempts remain, else fail with `reason`."""
        with self._write() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE {where}", args).fetchall()
            for row in rows:
                if row["attempts"] < self.max_attempts:
                    conn.execute(
                        "UPDATE jobs SET status = ?, started_at = NULL, worker = NULL, step = 0, losses = NULL, "
                        "has_preview = 0, error = ? WHERE seq = ?",
                        (QUEUED, f"{reason}; re-queued (attempt {row['attempts']} of {self.max_attempts} "
                                 f"was interrupted)", row["seq"]))
                else:
                    conn.execute(
                        "UPDATE jobs SET status = ?, finished_at = ?, error = ? WHERE seq = ?",
                        (FAILED, now(), f"{reason} (attempt {row['attempts']} of {self.max_attempts}); "
                                        "submit it again", row["seq"]))
            seqs = [row["seq"] for row in rows]
            recovered = [self._row_to_job(r) for r in conn.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE seq IN ({','.join('?' * len(seqs))})", seqs).fetchall()] \
                if seqs else []
        for job in recovered:
            self._remove_preview(job.id)
        return recovered

    def cleanup(self, ttl_s: float) -> int:
        """Delete finished jobs older than ttl_s (rows and files), and stray job folders; returns jobs deleted."""
        cutoff = now() - ttl_s
        with self._write() as conn:
            ids = [r["id"] for r in conn.execute(
                "SELECT id FROM jobs WHERE status IN (?, ?, ?) AND finished_at < ?", (*FINISHED, cutoff)).fetchall()]
            conn.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in ids])
        for job_id in ids:
            self._remove_files(job_id)
        self._remove_stray_dirs()
        return len(ids)

    def _remove_stray_dirs(self) -> None:
        try:
            folders = [p for p in self.files_dir.iterdir() if p.is_dir()]
        except OSError:
            return
        if not folders:
            return
        known = {r[0] for r in self._conn.execute("SELECT id FROM jobs").fetchall()}
        limit = now() - ORPHAN_DIR_AGE_S
        for folder in folders:
            with _suppress_os_error():
                if folder.name not in known and folder.stat().st_mtime < limit:
                    shutil.rmtree(folder, ignore_errors=True)


class _Transaction:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind, exc, tb) -> None:
        self.conn.execute("COMMIT" if kind is None else "ROLLBACK")


# ------------------------------------------------------------------ time estimates

# A job's run time is modelled per device kind ("cpu", "cuda:NVIDIA H200", ...), from measurements only:
#     seconds = head + sum over its scales of evaluations x (a + b x megapixels of that scale) + tail
# a (s per evaluation) and b (s per megapixel-evaluation) are fitted by exponentially weighted least squares over
# every measured stretch of evaluations (the workers' warm-up at start, then every job's progress), so the model
# follows the device as it is now (other load on it included). head (reading the inputs, building the targets of
# each scale) and tail (encoding and storing the result) are exponentially weighted means over finished jobs.
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
    from app.style.engine import fit_size, schedule

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
