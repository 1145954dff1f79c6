"""The server-sent event streams of style jobs: one watcher per job, shared by every listener of that job.

* JobEventHub.join(job_id) -> Listener, or 429 past STREAMS_PER_JOB listeners on the job or MAX_EVENT_STREAMS in
  all. The first listener of a job starts its watcher: one asyncio task that reads the job from the store (in a
  worker thread: SQLite may wait on a lock, Redis on the network) every POLL_S and hands each new snapshot (the job
  and, while it is unfinished, the time estimates) to the job's listeners. The watcher stops after its last
  listener leaves, or once it has handed out a finished (or deleted) job. So 50 listeners of one job cost one store
  read per POLL_S, not 50.
* A listener holds only the newest snapshot it has not taken yet: a slow client skips snapshots, never blocks the
  watcher or the other listeners, never grows a queue.
* close_on(shutdown): when the server begins to stop (SIGTERM/SIGINT), every listener is told SHUTDOWN; its stream
  sends a final `shutdown` event and ends, so uvicorn's graceful shutdown can complete.
* job_stream(): the event stream of one listener (`status`, `progress`, `shutdown` events, keep-alive and
  store-unreachable comments), with every number finite (json_safe).
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass

import anyio
from starlette.background import BackgroundTask

from app.core.errors import APIError
from app.core.lifecycle import ShutdownSignal
from app.style.eta import EtaBoard
from app.style.jobs import Job, JobStoreUnavailable

logger = logging.getLogger("app.style")

POLL_S = 0.2  # how often a job's watcher reads it
STORE_RETRY_S = 1.0  # how often a watcher retries a job store that is unreachable
KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing an idle stream
STREAMS_RETRY_AFTER_S = 10  # Retry-After of a 429 for too many streams
RECONNECT_MS = 3000  # the `retry:` hint of the shutdown event: when an EventSource tries again
SHUTDOWN_DETAIL = "the server is restarting; reconnect to follow the job"


@dataclass(frozen=True)
class Snapshot:
    job: Job | None  # None: the job was deleted (or expired)
    board: EtaBoard | None = None  # the time estimates, while the job is unfinished (None when unavailable)


class _Marker:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


UNREACHABLE = _Marker("UNREACHABLE")  # the job store cannot be reached; the watcher retries
SHUTDOWN = _Marker("SHUTDOWN")  # the server is stopping: the stream says so and ends
Item = Snapshot | _Marker


# --------------------------------------------------------------------------------------------- serialisation

def json_safe(value):
    """`value` with every NaN and infinity replaced by None, so that it serialises as strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def sse(event: str, data: dict, retry_ms: int | None = None) -> str:
    """One server-sent event; its data is strict JSON (a non-finite number becomes null)."""
    retry = f"retry: {retry_ms}\n" if retry_ms is not None else ""
    return f"event: {event}\n{retry}data: {json.dumps(json_safe(data), separators=(',', ':'), allow_nan=False)}\n\n"


# --------------------------------------------------------------------------------------------- listeners

class Listener:
    """One open stream's place in the hub: the newest snapshot not taken yet, and whether the server is stopping."""

    def __init__(self, hub: JobEventHub, job_id: str, since: int):
        self.job_id = job_id
        self.since = since  # the watcher's reads started before this listener joined are not handed to it
        self.fresh = True  # its first snapshot is handed over even if the job did not change
        self._hub = hub
        self._pending: Item | None = None
        self._ready = asyncio.Event()
        self._closing = False
        self._left = False

    def offer(self, item: Item) -> None:
        self._pending = item  # replaces one not taken yet: only the newest is kept
        self._ready.set()

    def close(self) -> None:
        self._closing = True
        self._ready.set()

    async def next(self, timeout: float) -> Item | None:
        """The next snapshot (or marker); None when `timeout` seconds pass without one."""
        if not self._ready.is_set():
            try:
                async with asyncio.timeout(max(0.0, timeout)):
                    await self._ready.wait()
            except TimeoutError:
                return None
        item, self._pending = self._pending, None
        if item is None:
            return SHUTDOWN  # only set without a snapshot when closing; stays set, so every call says so
        if not self._closing:
            self._ready.clear()
        return item

    def leave(self) -> None:
        """Give the place back (idempotent)."""
        if not self._left:
            self._left = True
            self._hub._leave(self)

    @property
    def background(self) -> BackgroundTask:
        """leave() as a response's background task: it runs even when the client left before the stream began."""
        async def release() -> None:  # a coroutine: run on the event loop, not in a worker thread
            self.leave()

        return BackgroundTask(release)


class _Watch:
    def __init__(self) -> None:
        self.reads = 0  # reads started
        self.task: asyncio.Task | None = None


# --------------------------------------------------------------------------------------------- the hub

class JobEventHub:
    """One watcher task per job with listeners; caps on listeners per job and in all (see the module docstring).

    `read(job_id)` is the store's get (blocking; run in a worker thread), `board()` the time estimates (blocking;
    None for none)."""

    def __init__(self, read: Callable[[str], Job | None], board: Callable[[], EtaBoard] | None = None, *,
                 poll_s: float = POLL_S, retry_s: float = STORE_RETRY_S, per_job: int = 16, total: int = 256):
        self._read, self._board = read, board
        self.poll_s, self.retry_s = poll_s, retry_s
        self.per_job, self.total = per_job, total
        self._listeners: dict[str, set[Listener]] = {}
        self._watches: dict[str, _Watch] = {}
        self._count = 0
        self._closing = False
        self._shutdown_task: asyncio.Task | None = None

    @property
    def streams(self) -> int:
        return self._count

    @property
    def watchers(self) -> int:
        return len(self._watches)

    def join(self, job_id: str) -> Listener:
        """A place for one more stream of `job_id`; APIError 429 past a cap."""
        self._check_caps(job_id)
        watch = self._watches.get(job_id) or self._start_watch(job_id)
        listener = Listener(self, job_id, since=watch.reads)
        self._listeners.setdefault(job_id, set()).add(listener)
        self._count += 1
        if self._closing:
            listener.close()
        return listener

    def _check_caps(self, job_id: str) -> None:
        here = len(self._listeners.get(job_id, ()))
        poll = f"or follow the job with GET /v1/style/jobs/{job_id}"
        if here >= self.per_job:
            raise APIError(f"job {job_id} already has {here} open event streams, the most one job may have "
                           f"(STREAMS_PER_JOB={self.per_job}); close one, {poll}", 429,
                           {"Retry-After": str(STREAMS_RETRY_AFTER_S)})
        if self._count >= self.total:
            raise APIError(f"the server has {self._count} event streams open, the most it allows "
                           f"(MAX_EVENT_STREAMS={self.total}); retry later, {poll}", 429,
                           {"Retry-After": str(STREAMS_RETRY_AFTER_S)})

    def _leave(self, listener: Listener) -> None:
        listeners = self._listeners.get(listener.job_id)
        if listeners is None or listener not in listeners:
            return
        listeners.discard(listener)
        self._count -= 1
        if not listeners:
            del self._listeners[listener.job_id]  # its watcher sees that at its next read and stops

    # ------------------------------------------------------------------ watchers

    def _start_watch(self, job_id: str) -> _Watch:
        watch = self._watches[job_id] = _Watch()
        watch.task = asyncio.create_task(self._watch(job_id, watch), name=f"job-events-{job_id}")
        return watch

    async def _watch(self, job_id: str, watch: _Watch) -> None:
        previous: Job | None = None
        try:
            while self._listeners.get(job_id):
                watch.reads += 1
                started = watch.reads
                force = any(listener.fresh for listener in self._listeners[job_id])
                try:
                    job, board = await anyio.to_thread.run_sync(self._look, job_id, previous, force)
                except JobStoreUnavailable:
                    self._publish(job_id, UNREACHABLE, started, changed=True)
                    await asyncio.sleep(self.retry_s)
                    continue
                changed, previous = job != previous or started == 1, job
                self._publish(job_id, Snapshot(job, board), started, changed)
                if (job is None or job.finished) and not self._late_joiners(job_id, started):
                    return  # handed out the end; a listener that joins later starts a new watcher
                await asyncio.sleep(self.poll_s)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not leave listeners waiting forever: they are told to reconnect
            logger.exception("event watcher of job %s failed", job_id)
            for listener in self._listeners.get(job_id, ()):
                listener.close()
        finally:
            if self._watches.get(job_id) is watch:
                del self._watches[job_id]

    def _look(self, job_id: str, previous: Job | None, force: bool) -> tuple[Job | None, EtaBoard | None]:
        """In a worker thread: the job, and the time estimates when a snapshot will be handed out."""
        job = self._read(job_id)
        if job is None or job.finished or self._board is None or (job == previous and not force):
            return job, None
        try:
            return job, self._board()
        except JobStoreUnavailable:
            return job, None  # the estimate is dropped, not the snapshot
        except Exception:
            logger.exception("time estimates unavailable")
            return job, None

    def _publish(self, job_id: str, item: Item, started: int, changed: bool) -> None:
        for listener in self._listeners.get(job_id, ()):
            if listener.since >= started or not (changed or listener.fresh):
                continue  # joined while this read was under way (it gets the next one), or nothing new for it
            listener.fresh = False
            listener.offer(item)

    def _late_joiners(self, job_id: str, started: int) -> bool:
        return any(listener.since >= started for listener in self._listeners.get(job_id, ()))

    def stream(self, first: Job, board: EtaBoard | None, listener: Listener | None,
               view: Callable[[Job, EtaBoard | None], dict], keepalive_s: float = KEEPALIVE_S) -> AsyncIterator[str]:
        """The events of one stream (job_stream)."""
        return job_stream(first, board, listener, view, keepalive_s)

    # ------------------------------------------------------------------ shutdown

    def close_on(self, shutdown: ShutdownSignal) -> None:
        """Tell every listener SHUTDOWN (now and when joining later) once `shutdown` is set."""
        async def wait() -> None:
            await shutdown.wait()
            self.shutdown()

        self._shutdown_task = asyncio.create_task(wait(), name="job-events-shutdown")

    def shutdown(self) -> None:
        self._closing = True
        for listeners in self._listeners.values():
            for listener in listeners:
                listener.close()

    async def close(self) -> None:
        """Stop every task of the hub (the lifespan's end)."""
        self.shutdown()
        tasks = [task for task in (self._shutdown_task, *(w.task for w in self._watches.values())) if task]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with suppress(asyncio.CancelledError):
                await task


# --------------------------------------------------------------------------------------------- one stream

class _StreamState:
    """What one stream has sent: events only for what changed, keep-alives when quiet, then its end."""

    def __init__(self, job_id: str, view: Callable[[Job, EtaBoard | None], dict], keepalive_s: float):
        self.job_id, self.view, self.keepalive_s = job_id, view, keepalive_s
        self.sent_status: tuple | None = None
        self.sent_step: int | None = None
        self.status = "unknown"  # the job's status as last seen, for the shutdown event
        self.last_sent = time.monotonic()
        self.ended = False

    def wait_s(self) -> float:
        return self.last_sent + self.keepalive_s - time.monotonic()

    def text(self, item: Item | None) -> str:
        """The text to send for `item` (None: the wait for one timed out); '' for nothing."""
        now = time.monotonic()
        if item is SHUTDOWN:
            self.ended = True
            return sse("shutdown", {"id": self.job_id, "status": self.status, "detail": SHUTDOWN_DETAIL},
                       RECONNECT_MS)
        if item is UNREACHABLE:
            return self._comment(now, self.keepalive_s / 3, ": job store unreachable, retrying\n\n")
        if item is None:
            return self._comment(now, self.keepalive_s, ": keep-alive\n\n")
        text = self._snapshot(item)
        if text:
            self.last_sent = now
        return text

    def _comment(self, now: float, every: float, text: str) -> str:
        if now - self.last_sent < every:
            return ""
        self.last_sent = now
        return text

    def _snapshot(self, snapshot: Snapshot) -> str:
        job = snapshot.job
        if job is None:
            self.ended = True
            return sse("status", {"id": self.job_id, "status": "deleted"})
        self.status, self.ended = job.status, job.finished
        chunks = []
        if job.step > 0 and job.step != self.sent_step:
            self.sent_step = job.step
            view = self.view(job, snapshot.board)
            chunks.append(sse("progress", {"id": job.id, **view["progress"], "losses": job.losses,
                                           "preview_url": view["preview_url"], "eta_s": view["eta_s"]}))
        if (job.status, job.queue_position) != self.sent_status:
            self.sent_status = (job.status, job.queue_position)
            chunks.append(sse("status", self.view(job, snapshot.board)))
        return "".join(chunks)


async def job_stream(first: Job, board: EtaBoard | None, listener: Listener | None,
                     view: Callable[[Job, EtaBoard | None], dict],
                     keepalive_s: float = KEEPALIVE_S) -> AsyncIterator[str]:
    """The events of one stream: `first` (read by the route), then the listener's snapshots until the job ends,
    is deleted, or the server stops. `listener` None: `first` is finished, its status is the whole stream."""
    state = _StreamState(first.id, view, keepalive_s)
    try:
        yield state.text(Snapshot(first, board))
        while listener is not None and not state.ended:
            text = state.text(await listener.next(state.wait_s()))
            if text:
                yield text
    finally:
        if listener is not None:
            listener.leave()
