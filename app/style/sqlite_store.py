"""The embedded job store: one SQLite file in WAL mode (DATA_DIR/jobs.sqlite3), short transactions, one connection
per thread and process (app/style/sqlite_connections.py); each job's files in DATA_DIR/jobs/<id>/
(app/style/job_files.py).

* A worker claim()s the oldest queued job in one IMMEDIATE transaction, so two workers never get the same job.
* recover_orphans()/recover_worker(): a job left running by a dead process is re-queued (keeping its place)
  while attempts < max_attempts, else failed with a message saying the server stopped.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from app.style.eta import StepTimes
from app.style.job_files import JobFiles
from app.style.jobs import (
    BUSY_TIMEOUT_S, CANCELLED, DB_NAME, DEFAULT_MAX_ATTEMPTS, FAILED, FINISHED, JOBS_DIRNAME,
    PREVIEW_FILE, QUEUED, RESULT_FILE, RUNNING, SERVER_STOPPED, STATUSES, SUCCEEDED, WORKER_DIED, Job, QueueFull,
    job_inputs, new_job_id, now,
)
from app.style.sqlite_connections import ThreadConnections


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


class SQLiteJobStore:
    """The embedded default: one SQLite file in WAL mode, short transactions, one connection per thread/process."""

    def __init__(self, data_dir: Path, max_attempts: int = DEFAULT_MAX_ATTEMPTS):
        self.data_dir = Path(data_dir)
        self.max_attempts = max_attempts
        self.files = JobFiles(self.data_dir / JOBS_DIRNAME)
        self.db = ThreadConnections(self.data_dir / DB_NAME, BUSY_TIMEOUT_S)
        conn = self.db.connect_new()
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            columns = {row["name"] for row in conn.execute("PRAGMA table_info(jobs)")}
            if "owner" not in columns:  # a DATA_DIR written before jobs had owners
                conn.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")
            conn.execute("CREATE INDEX IF NOT EXISTS jobs_owner_seq ON jobs (owner, seq)")
        finally:
            conn.close()

    @property
    def _conn(self) -> sqlite3.Connection:
        return self.db.conn

    def _write(self):
        return self.db.write()

    def close(self) -> None:
        self.db.close()

    def read_file(self, job_id: str, name: str) -> bytes | None:
        """One of a job's files (an input, the preview, the result); None when it is not there."""
        return self.files.read(job_id, name)

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
        self.files.write_inputs(job_id, content, styles)
        try:
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
            self.files.remove(job_id)
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
        self.files.remove(job_id)
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
            if self.should_stop(job_id, worker) or not self.files.write_running(job_id, PREVIEW_FILE, preview_png):
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
        if self.should_stop(job_id, worker) or not self.files.write_running(job_id, RESULT_FILE, result_png):
            return False
        where, extra = self._owned(worker)
        with self._write() as conn:
            cursor = conn.execute(
                f"UPDATE jobs SET status = ?, finished_at = ?, step = total, losses = COALESCE(?, losses), "
                f"error = NULL WHERE {where}",
                (SUCCEEDED, now(), json.dumps(losses) if losses is not None else None, job_id, *extra))
        if cursor.rowcount != 1:
            self.files.unlink(job_id, RESULT_FILE)
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
            self.files.unlink(released, PREVIEW_FILE)
        return ids

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
            self.files.unlink(job.id, PREVIEW_FILE)
        return recovered

    def cleanup(self, ttl_s: float) -> int:
        """Delete finished jobs older than ttl_s (rows and files), and stray job folders; returns jobs deleted."""
        cutoff = now() - ttl_s
        with self._write() as conn:
            ids = [r["id"] for r in conn.execute(
                "SELECT id FROM jobs WHERE status IN (?, ?, ?) AND finished_at < ?", (*FINISHED, cutoff)).fetchall()]
            conn.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in ids])
        for job_id in ids:
            self.files.remove(job_id)
        self.files.remove_strays(lambda: {r[0] for r in self._conn.execute("SELECT id FROM jobs").fetchall()})
        return len(ids)
