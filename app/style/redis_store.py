"""The distributed job store (JOB_BACKEND=redis): job records and files in Redis, delivery by Dramatiq.

Every API replica and every worker host talks to the same Redis, so each of them sees every job. The records and
the job's files live in Redis under REDIS_NAMESPACE (default "model-server"):

    <ns>:job:<id>          hash: the job record (the fields of app.style.jobs.Job)
    <ns>:job:<id>:files    hash: file name -> bytes (uploaded inputs, the latest preview, the result)
    <ns>:seq               counter: submission order (and queue order)
    <ns>:jobs              sorted set of every job id by submission order (the listing, newest first)
    <ns>:owned:<owner>     sorted set of the job ids of one owner (API key name), like <ns>:jobs
    <ns>:queued            sorted set of queued job ids by queue order (queue_position = rank + 1)
    <ns>:running           set of running job ids
    <ns>:finished          sorted set of finished job ids by finish time (RESULT_TTL clean-up, metrics)
    <ns>:durations         list of the last run times (Retry-After estimates)
    <ns>:worker:<wid>      string with a TTL: the worker is alive; its value is the job it runs ("" when idle)
    <ns>:worker_devices    hash: worker id -> its device kind (entries of workers gone are dropped by the janitor)
    <ns>:step_times        hash: device kind -> its measured step-time model (JSON of app.style.jobs.StepTimes),
                           updated by every worker, read by every replica for the time estimates

Delivery is Dramatiq's (app/style/dispatch.py): submit() writes the record, then sends a message holding only
the job id; whichever worker receives it claim()s the job. Every state change is one Lua script, so replicas,
workers and the janitor never see half of a change, and a message for a job that is finished, or running on a
live worker, is dropped by claim(). That makes duplicate messages harmless, so a job that needs running again is
simply sent again.

A worker killed mid-job stops refreshing its <ns>:worker:<wid> key; after JOB_HEARTBEAT_TIMEOUT_S the janitor
(run by every API replica) re-queues its job at the back of the queue and sends it again, or fails it once
JOB_MAX_ATTEMPTS starts were interrupted. A worker that receives such a job before the janitor ran does the same
in claim().

Redis errors (connection refused, timeout, loading after a restart) become JobStoreUnavailable (the API answers
503 and keeps trying); writes refused at maxmemory become JobStoreFull (507).
"""
from __future__ import annotations

import functools
import itertools
import json
import logging
import random
import time
from typing import Any, Callable

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from app.style.jobs import (
    CANCELLED, FAILED, QUEUED, RUNNING, STATUSES, SUCCEEDED, Job, JobStoreFull, JobStoreUnavailable, QueueFull,
    job_inputs, new_job_id, now,
)
from app.style.eta import StepTimes
from app.style.redis_scripts import SCRIPTS

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 2.0
STEP_TIMES_RETRY_S = 5.0  # how long a worker keeps retrying a step-time update that other writers keep beating
SOCKET_TIMEOUT_S = 5.0
FINISHED_KEEP_MARGIN_S = 3600.0  # finished jobs also expire by themselves this long after RESULT_TTL
WORKER_LOST = "the worker running this job stopped sending heartbeats (killed, crashed or cut off from Redis)"

_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError)


def _store_call(method: Callable) -> Callable:
    """Redis trouble -> JobStoreUnavailable / JobStoreFull, whatever the method was doing."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except _UNAVAILABLE as exc:
            raise JobStoreUnavailable(f"the job store (Redis) is unreachable: {exc}") from None
        except redis.exceptions.ResponseError as exc:
            # a plain command raises OutOfMemoryError; a script's write fails with an "OOM ..." error
            if isinstance(exc, redis.exceptions.OutOfMemoryError) or "OOM command not allowed" in str(exc):
                raise JobStoreFull(f"the job store (Redis) is full: {exc}") from None
            raise

    return wrapper


def connect(url: str) -> redis.Redis:
    """A client that fails fast (a job route answers 503 within seconds) and reconnects by itself."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S, health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1), retry_on_error=[redis.exceptions.ConnectionError])


class RedisJobStore:
    """JobStore on Redis. `dispatch(job_id)` sends a job to the workers (Dramatiq); it is called after the record
    is written, whenever a job is queued: at submit, after a dead worker's job is re-queued, after a release."""

    def __init__(self, client: redis.Redis, dispatch: Callable[[str], None], namespace: str = "model-server",
                 max_attempts: int = 2, heartbeat_timeout_s: float = 30.0, result_ttl_s: float = 86400.0,
                 result_max_bytes: int = 64 * 1024 * 1024):
        self.client = client
        self.dispatch = dispatch
        self.ns = namespace
        self.max_attempts = max_attempts
        self.heartbeat_ms = int(heartbeat_timeout_s * 1000)
        self.keep_ms = int((result_ttl_s + FINISHED_KEEP_MARGIN_S) * 1000)
        self.result_max_bytes = result_max_bytes
        scripts = SCRIPTS
        # register_script re-loads a script that a restarted Redis forgot (NOSCRIPT) by itself
        self._scripts = {name: client.register_script(body) for name, body in scripts.items()}

    def _run(self, script: str, *args: Any) -> Any:
        return self._scripts[script](args=[self.ns, *args])

    def _key(self, *parts: str) -> str:
        return ":".join((self.ns, *parts))

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------------ records

    def _to_job(self, record: dict[bytes, bytes], position: int | None = None) -> Job:
        r = {k.decode(): v.decode() for k, v in record.items()}

        def number(name: str) -> float | None:
            return float(r[name]) if r.get(name) else None

        status = r["status"]
        return Job(
            id=r["id"], status=status, params=json.loads(r["params"]), inputs=json.loads(r["inputs"]),
            created_at=float(r["created_at"]), started_at=number("started_at"), finished_at=number("finished_at"),
            step=int(r.get("step") or 0), total=int(r["total"]),
            losses=json.loads(r["losses"]) if r.get("losses") else None, error=r.get("error") or None,
            attempts=int(r.get("attempts") or 0), cancel_requested=r.get("cancel_requested") == "1",
            worker=r.get("worker") or None, has_preview=r.get("has_preview") == "1", seq=int(r["seq"]),
            owner=r.get("owner") or None,
            queue_position=position + 1 if status == QUEUED and position is not None else None)

    def _jobs(self, ids: list[str]) -> list[Job | None]:
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self._key("job", job_id))
            pipe.zrank(self._key("queued"), job_id)
        replies = pipe.execute()
        return [self._to_job(record, position) if record else None
                for record, position in zip(replies[::2], replies[1::2])]

    # ------------------------------------------------------------------ API side

    @_store_call
    def submit(self, params: dict, total: int, content: tuple[str, bytes], styles: list[dict],
               max_queued: int, job_id: str | None = None, content_size: tuple[int, int] | None = None,
               owner: str | None = None, max_queued_per_owner: int = 0) -> Job:
        job_id = job_id or new_job_id()
        files = {content[0]: content[1], **{s["file"]: s["data"] for s in styles if "data" in s}}
        inputs = job_inputs(content, styles, content_size)
        record = {"id": job_id, "status": QUEUED, "params": json.dumps(params), "inputs": json.dumps(inputs),
                  "created_at": repr(now()), "total": int(total), "step": 0, "attempts": 0}
        self.client.hset(self._key("job", job_id, "files"), mapping=files)
        try:
            accepted, number = self._run("submit", job_id, max_queued, owner or "", max_queued_per_owner,
                                         *_flatten(record))
            if accepted == 0:
                raise QueueFull(number, max_queued)
            if accepted == 2:
                raise QueueFull(number, max_queued_per_owner, owner)
            self.dispatch(job_id)
        except BaseException:
            self._forget(job_id, owner)
            raise
        job = self.get(job_id)
        assert job is not None
        return job

    def _forget(self, job_id: str, owner: str | None = None) -> None:
        """Undo a submit that could not be completed (best effort: Redis may be the reason)."""
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(self._key("job", job_id), self._key("job", job_id, "files"))
            pipe.zrem(self._key("jobs"), job_id)
            pipe.zrem(self._key("queued"), job_id)
            if owner:
                pipe.zrem(self._key("owned", owner), job_id)
            pipe.execute()
        except redis.exceptions.RedisError:
            pass

    @_store_call
    def get(self, job_id: str) -> Job | None:
        return self._jobs([job_id])[0]

    @_store_call
    def list(self, limit: int, offset: int, owner: str | None = None) -> tuple[list[Job], int]:
        """Newest first, and the total number of jobs, of `owner` only when given.

        A finished record that Redis expired by itself (no replica ran cleanup() for an hour past RESULT_TTL) leaves
        its id in the indexes; the ids met on the page are dropped (from the owner's index and the listing of
        everything) and the page read again, so a page is never short of live jobs that exist."""
        index = self._key("owned", owner) if owner is not None else self._key("jobs")
        while True:
            ids = [i.decode() for i in self.client.zrevrange(index, offset, offset + limit - 1)]
            jobs = self._jobs(ids)
            expired = [job_id for job_id, job in zip(ids, jobs) if job is None]
            if not expired:
                return jobs, self.client.zcard(index)
            pipe = self.client.pipeline(transaction=False)
            for key in {index, self._key("jobs")}:
                pipe.zrem(key, *expired)
            pipe.zrem(self._key("finished"), *expired)
            pipe.execute()

    @_store_call
    def count(self, status: str, owner: str | None = None) -> int:
        """Jobs in `status` (any of STATUSES; ValueError otherwise), of `owner` only when given. Queued and running
        jobs without an owner are one command; otherwise each candidate's record is read (a finished status reads
        every finished job kept, up to RESULT_TTL's worth)."""
        if status not in STATUSES:
            raise ValueError(f"count() knows {', '.join(STATUSES)}, not {status!r}")
        if status == QUEUED and owner is None:
            return self.client.zcard(self._key("queued"))
        if status == RUNNING and owner is None:
            return self.client.scard(self._key("running"))
        if status == QUEUED:
            ids = self.client.zrange(self._key("queued"), 0, -1)
        elif status == RUNNING:
            ids = self.client.smembers(self._key("running"))
        else:
            ids = self.client.zrange(self._key("finished"), 0, -1)
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self._key("job", job_id.decode()), "status", "owner")
        wanted = (status.encode(), None if owner is None else owner.encode())
        return sum(1 for found, mine in pipe.execute()
                   if found == wanted[0] and (owner is None or mine == wanted[1]))

    @_store_call
    def read_file(self, job_id: str, name: str) -> bytes | None:
        return self.client.hget(self._key("job", job_id, "files"), name)

    @_store_call
    def cancel(self, job_id: str) -> Job | None:
        self._run("cancel", job_id, repr(now()), self.keep_ms)
        return self.get(job_id)

    @_store_call
    def delete(self, job_id: str) -> bool:
        outcome = self._run("delete", job_id)
        if isinstance(outcome, bytes):
            raise ValueError(f"job {job_id} is {outcome.decode()}; cancel it first")
        return bool(outcome)

    @_store_call
    def mean_run_seconds(self) -> float | None:
        durations = [float(d) for d in self.client.lrange(self._key("durations"), 0, -1)]
        return sum(durations) / len(durations) if durations else None

    @_store_call
    def finished_since(self, since: float) -> list[tuple[str, str, float | None, float]]:
        """(id, status, started_at, finished_at) of jobs finished after `since`, across the whole deployment."""
        pairs = self.client.zrangebyscore(self._key("finished"), f"({since!r}", "+inf", withscores=True)
        pipe = self.client.pipeline(transaction=False)
        for job_id, _ in pairs:
            pipe.hmget(self._key("job", job_id.decode()), "status", "started_at")
        out = []
        for (job_id, finished_at), (status, started_at) in zip(pairs, pipe.execute()):
            if status is not None:
                out.append((job_id.decode(), status.decode(), float(started_at) if started_at else None,
                            finished_at))
        return out

    @_store_call
    def workers(self) -> list[dict]:
        """The live workers (their heartbeat key exists), the job each runs and its device kind."""
        prefix = self._key("worker", "")
        keys = sorted(self.client.scan_iter(match=prefix + "*", count=100))
        values = self.client.mget(keys) if keys else []
        live = [(key.decode()[len(prefix):], value) for key, value in zip(keys, values) if value is not None]
        devices = self.client.hmget(self._key("worker_devices"), [wid for wid, _ in live]) if live else []
        return [{"id": wid, "alive": True, "job": value.decode() or None,
                 "device": device.decode() if device else None} for (wid, value), device in zip(live, devices)]

    @_store_call
    def active_jobs(self) -> list[Job]:
        """Every running job, then every queued job in queue order, for the time estimates."""
        running = sorted(i.decode() for i in self.client.smembers(self._key("running")))
        queued = [i.decode() for i in self.client.zrange(self._key("queued"), 0, -1)]
        jobs = [job for job in self._jobs(running + queued) if job is not None]
        return [job for job in jobs if job.status == RUNNING] + sorted(
            (job for job in jobs if job.status == QUEUED), key=lambda job: job.queue_position or 0)

    @_store_call
    def step_times(self) -> dict[str, StepTimes]:
        return {device.decode(): StepTimes.from_dict(json.loads(model))
                for device, model in self.client.hgetall(self._key("step_times")).items()}

    @_store_call
    def record_step_times(self, device: str, samples: list[tuple[float, int, float]],
                          head_s: float | None = None, tail_s: float | None = None) -> None:
        """Fold measurements into `device`'s model: an optimistic transaction (WATCH), retried when another
        worker updated it in between, so no worker's samples are lost."""
        key = self._key("step_times")
        deadline = time.monotonic() + STEP_TIMES_RETRY_S
        with self.client.pipeline(transaction=True) as pipe:
            for attempt in itertools.count():
                try:
                    pipe.watch(key)
                    raw = pipe.hget(key, device)
                    model = StepTimes.from_dict(json.loads(raw)) if raw else StepTimes.unmeasured(device)
                    model.observe_all(samples, head_s, tail_s)
                    pipe.multi()
                    pipe.hset(key, device, json.dumps(model.to_dict()))
                    pipe.execute()
                    return
                except redis.exceptions.WatchError:
                    if time.monotonic() > deadline:  # only under a storm of writers: an estimate, not a job, is lost
                        log.warning("step times of %s not recorded: %d conflicting updates in %.0f s",
                                    device, attempt + 1, STEP_TIMES_RETRY_S)
                        return
                    time.sleep(random.uniform(0, 0.001 * min(attempt + 1, 20)))  # jittered: writers stop colliding

    @_store_call
    def register_worker(self, worker: str, device: str) -> None:
        """A worker says which device kind it runs on (the time estimates price its jobs with that model)."""
        self.client.hset(self._key("worker_devices"), worker, device)

    @_store_call
    def forget_gone_workers(self) -> int:
        """Drop the device entries of workers whose heartbeat key is gone."""
        key = self._key("worker_devices")
        ids = [wid.decode() for wid in self.client.hkeys(key)]
        if not ids:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for wid in ids:
            pipe.exists(self._key("worker", wid))
        gone = [wid for wid, alive in zip(ids, pipe.execute()) if not alive]
        if gone:
            self.client.hdel(key, *gone)
        return len(gone)

    # ------------------------------------------------------------------ worker side

    @_store_call
    def claim_job(self, job_id: str, worker: str) -> tuple[str, Job | None]:
        """A worker received `job_id`: ('claimed' | 'retried', the job now running on it), or (why not, None):
        'gone' (deleted/expired), 'finished' (cancelled meanwhile), 'busy' (running on a live worker: a duplicate
        delivery) or 'failed' (its worker died once too often)."""
        outcome = self._run("claim", job_id, worker, repr(now()), self.max_attempts, self.heartbeat_ms,
                            WORKER_LOST, self.keep_ms).decode()
        return outcome, self.get(job_id) if outcome in ("claimed", "retried") else None

    @_store_call
    def heartbeat(self, worker: str, job_id: str | None) -> None:
        """The worker is alive and runs `job_id` (None: idle). The caller serialises this with claim_job()."""
        self.client.set(self._key("worker", worker), job_id or "", px=self.heartbeat_ms)

    @_store_call
    def forget_worker(self, worker: str) -> None:
        """A worker that stops cleanly leaves the live list at once."""
        self.client.delete(self._key("worker", worker))
        self.client.hdel(self._key("worker_devices"), worker)

    @_store_call
    def should_stop(self, job_id: str, worker: str | None = None) -> bool:
        status, cancel, owner = self.client.hmget(self._key("job", job_id), "status", "cancel_requested", "worker")
        return (status != RUNNING.encode() or cancel == b"1"
                or (worker is not None and owner != worker.encode()))

    @_store_call
    def update_progress(self, job_id: str, step: int, total: int, losses: dict | None,
                        preview_png: bytes | None = None, worker: str | None = None) -> bool:
        return bool(self._run("progress", job_id, worker or "", int(step), int(total),
                              json.dumps(losses) if losses is not None else "", preview_png or b""))

    def _finish(self, job_id: str, worker: str | None, status: str, error: str = "", losses: dict | None = None,
                result: bytes = b"") -> bool:
        return bool(self._run("finish", job_id, worker or "", repr(now()), self.keep_ms, status, error,
                              json.dumps(losses) if losses is not None else "", result))

    @_store_call
    def finish(self, job_id: str, result_png: bytes, losses: dict | None = None,
               worker: str | None = None) -> bool:
        if len(result_png) > self.result_max_bytes:
            return self._finish(job_id, worker, FAILED, f"the result PNG is {len(result_png)} bytes, over the "
                                f"{self.result_max_bytes} bytes the job store keeps (STYLE_RESULT_MAX_BYTES); "
                                "ask for a smaller size")
        return self._finish(job_id, worker, SUCCEEDED, losses=losses, result=result_png)

    @_store_call
    def fail(self, job_id: str, error: str, worker: str | None = None) -> bool:
        return self._finish(job_id, worker, FAILED, error)

    @_store_call
    def mark_cancelled(self, job_id: str, worker: str | None = None) -> bool:
        return self._finish(job_id, worker, CANCELLED)

    @_store_call
    def release(self, worker: str, job_id: str | None = None) -> list[str]:
        """A worker stopping for a shutdown hands its job back: queued again (at the back), the attempt not
        counted, and sent again."""
        ids = [job_id] if job_id else [i.decode() for i in self.client.smembers(self._key("running"))]
        released = [i for i in ids if self._run("release", i, worker)]
        for released_id in released:
            self.dispatch(released_id)
        return released

    # ------------------------------------------------------------------ recovery and retention

    @_store_call
    def recover_dead_workers(self, reason: str = WORKER_LOST) -> list[tuple[str, str]]:
        """Running jobs whose worker's heartbeat key expired (or moved on): re-queued and sent again while
        attempts remain, else failed. Returns (id, new status) pairs. Safe to run from every replica at once."""
        flat = self._run("recover", repr(now()), self.max_attempts, self.keep_ms, reason)
        changed = [(flat[i].decode(), flat[i + 1].decode()) for i in range(0, len(flat), 2)]
        for job_id, status in changed:
            if status == QUEUED:
                self.dispatch(job_id)
        return changed

    @_store_call
    def cleanup(self, ttl_s: float) -> int:
        return int(self._run("cleanup", repr(now() - ttl_s)))

    @_store_call
    def ping(self) -> bool:
        return bool(self.client.ping())


def _flatten(mapping: dict) -> list:
    return [item for pair in mapping.items() for item in pair]

