"""One contract over both job stores (issue 15): every test here runs against a real SQLiteJobStore (a temporary
DATA_DIR) and a real RedisJobStore (a real redis-server), through the JobStore protocol only.

What is not the same in the two, and so not here: how a worker gets a job and how a dead one's jobs come back
(SQLiteJobStore.claim/recover_*: tests/test_style_jobs.py; RedisJobStore.claim_job/recover_dead_workers, the Lua
scripts, heartbeats, dispatch: tests/test_style_redis_store.py), where a released or recovered job goes in the
queue (its old place in SQLite, the back in Redis), and whether a finished job's inputs stay readable (Redis drops
them at once, SQLite with the job). The backends below only make a job run and look old; the assertions are the
protocol's."""
from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path

import pytest

from app.style import jobs as J
from app.style.jobs import JobStore, QueueFull
from app.style.sqlite_store import SQLiteJobStore
from app.style.redis_store import RedisJobStore, connect
from tests.redis_server import RedisServer, redis_server_fixture

PARAMS = {"size": 64, "steps": 3}
CONTENT = ("content.png", b"content-bytes")
STYLES = [{"file": "style_0.png", "data": b"style-bytes"}, {"preset": "udnie"}]
INPUTS = {"content": "content.png", "styles": [{"file": "style_0.png"}, {"preset": "udnie"}]}


class SQLiteBackend:
    name = "sqlite"

    def __init__(self, folder: Path):
        self.folder = folder
        self.store = SQLiteJobStore(folder)

    def start(self, job_id: str, worker: str) -> J.Job:
        """`job_id` (the oldest queued job) now running on `worker`."""
        job = self.store.claim(worker)
        assert job is not None and job.id == job_id, "the contract tests start the oldest queued job"
        return job

    def backdate(self, job_id: str, seconds: float) -> None:
        """The finished job looks as if it had finished `seconds` earlier."""
        self.store._conn.execute("UPDATE jobs SET finished_at = finished_at - ? WHERE id = ?", (seconds, job_id))

    def traces(self, job_id: str) -> list[str]:
        """Whatever is still stored for the job (nothing, once it is gone)."""
        found = [f"row {job_id}"] if self.store._conn.execute(
            "SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() else []
        return found + [str(p) for p in [self.store.files.root / job_id] if p.exists()]

    def another(self) -> JobStore:
        """A second handle on the same store, as another process would open it."""
        return SQLiteJobStore(self.folder)

    def close(self) -> None:
        self.store.close()


class RedisBackend:
    name = "redis"

    def __init__(self, server: RedisServer):
        self.server = server
        self.ns = f"contract-{secrets.token_hex(4)}"
        self.sent: list[str] = []
        self.store = RedisJobStore(connect(server.url), self.sent.append, namespace=self.ns, result_ttl_s=60)

    def start(self, job_id: str, worker: str) -> J.Job:
        assert self.store.active_jobs() and next(j for j in self.store.active_jobs() if j.status == J.QUEUED).id \
            == job_id, "the contract tests start the oldest queued job"
        outcome, job = self.store.claim_job(job_id, worker)
        assert outcome == "claimed", outcome
        return job

    def backdate(self, job_id: str, seconds: float) -> None:
        client, key = self.store.client, f"{self.ns}:job:{job_id}"
        finished_at = float(client.hget(key, "finished_at")) - seconds
        client.hset(key, "finished_at", repr(finished_at))
        client.zadd(f"{self.ns}:finished", {job_id: finished_at})

    def traces(self, job_id: str) -> list[str]:
        client = self.store.client
        found = [key.decode() for key in client.keys(f"{self.ns}:job:{job_id}*")]
        indexes = [f"{self.ns}:{name}" for name in ("jobs", "queued", "finished")]
        indexes += [key.decode() for key in client.keys(f"{self.ns}:owned:*")]
        found += [index for index in indexes if client.zscore(index, job_id) is not None]
        return found + ([f"{self.ns}:running"] if client.sismember(f"{self.ns}:running", job_id) else [])

    def another(self) -> JobStore:
        return RedisJobStore(connect(self.server.url), lambda job_id: None, namespace=self.ns)

    def close(self) -> None:
        self.store.close()


redis_server = redis_server_fixture("redis-contract")


@pytest.fixture(params=["sqlite", "redis"])
def backend(request, tmp_path):
    made = SQLiteBackend(tmp_path) if request.param == "sqlite" else RedisBackend(
        request.getfixturevalue("redis_server"))
    yield made
    made.close()


@pytest.fixture
def store(backend) -> JobStore:
    return backend.store


def submit(store: JobStore, owner: str | None = None, max_queued: int = 100, per_owner: int = 0,
           job_id: str | None = None, content_size: tuple[int, int] | None = None) -> J.Job:
    return store.submit(PARAMS, 3, CONTENT, STYLES, max_queued, job_id=job_id, content_size=content_size,
                        owner=owner, max_queued_per_owner=per_owner)


def ids(jobs: list[J.Job]) -> list[str]:
    return [job.id for job in jobs]


# --------------------------------------------------------------------------------------------- submit, get, read

def test_implements_the_protocol(store):
    assert isinstance(store, JobStore)


def test_submit_answers_the_queued_job_that_get_reads_back(store):
    before = time.time()
    job = submit(store)
    assert (job.status, job.queue_position, job.step, job.total, job.attempts) == (J.QUEUED, 1, 0, 3, 0)
    assert (job.owner, job.worker, job.error, job.losses, job.has_preview, job.cancel_requested) == \
        (None, None, None, None, False, False)
    assert job.started_at is None and job.finished_at is None and not job.finished and job.fraction == 0.0
    assert before <= job.created_at <= time.time()
    assert job.params == PARAMS and job.inputs == INPUTS
    assert store.get(job.id) == job  # every field, read back as submitted
    assert len(job.id) >= 20 and job.id != submit(store).id
    assert store.get("no-such-job") is None


def test_submit_keeps_the_owner_the_content_size_and_a_chosen_id(store):
    job = submit(store, owner="alice", job_id="a-chosen-id-0123456789", content_size=(400, 300))
    assert job.id == "a-chosen-id-0123456789" and job.owner == "alice"
    assert job.inputs == {**INPUTS, "content_size": [400, 300]}
    assert store.get(job.id) == job


def test_read_file_gives_the_inputs_and_none_for_what_is_not_there(store):
    job = submit(store)
    assert store.read_file(job.id, "content.png") == b"content-bytes"
    assert store.read_file(job.id, "style_0.png") == b"style-bytes"
    for name in (J.RESULT_FILE, J.PREVIEW_FILE, "style_1.png"):
        assert store.read_file(job.id, name) is None
    assert store.read_file("no-such-job", "content.png") is None


# --------------------------------------------------------------------------------------------- listing and counts

def test_list_is_newest_first_with_the_total_and_pages(store):
    made = [submit(store).id for _ in range(5)]
    page, total = store.list(2, 0)
    assert total == 5 and ids(page) == made[::-1][:2]
    page, total = store.list(2, 4)
    assert total == 5 and ids(page) == [made[0]] and page[0].queue_position == 1
    assert [job.queue_position for job in store.list(10, 0)[0]] == [5, 4, 3, 2, 1]
    assert store.list(10, 5) == ([], 5)


def test_list_by_owner_shows_only_that_owner_s_jobs_and_their_total(store):
    a1, n1, b1 = submit(store, "alice"), submit(store), submit(store, "bob")
    a2, n2 = submit(store, "alice"), submit(store)
    jobs, total = store.list(10, 0, owner="alice")
    assert ids(jobs) == [a2.id, a1.id] and total == 2
    assert [job.queue_position for job in jobs] == [4, 1]  # places in the whole queue
    assert (ids(store.list(1, 1, owner="alice")[0]), store.list(1, 1, owner="alice")[1]) == ([a1.id], 2)
    assert (ids(store.list(10, 0, owner="bob")[0]), store.list(10, 0, owner="bob")[1]) == ([b1.id], 1)
    assert store.list(10, 0, owner="nobody") == ([], 0)
    # jobs without an owner (no API_KEYS) are in the listing of everything, never in a named owner's
    everything, total = store.list(10, 0)
    assert ids(everything) == [n2.id, a2.id, b1.id, n1.id, a1.id] and total == 5
    assert [job.owner for job in everything] == [None, "alice", "bob", None, "alice"]


def test_count_by_status_with_and_without_owner(backend, store):
    a1, b1, a2, n1 = submit(store, "alice"), submit(store, "bob"), submit(store, "alice"), submit(store)
    backend.start(a1.id, "w1")
    assert (store.count(J.QUEUED), store.count(J.RUNNING)) == (3, 1)
    assert (store.count(J.QUEUED, "alice"), store.count(J.RUNNING, "alice")) == (1, 1)
    assert (store.count(J.QUEUED, "bob"), store.count(J.RUNNING, "bob")) == (1, 0)
    assert (store.count(J.QUEUED, "nobody"), store.count(J.RUNNING, "nobody")) == (0, 0)
    # finished statuses are counted too, by the same rules
    assert store.finish(a1.id, b"result", None, "w1")
    store.cancel(b1.id)
    backend.start(a2.id, "w1")
    assert store.fail(a2.id, "boom", "w1")
    counts = {status: store.count(status) for status in J.STATUSES}
    assert counts == {J.QUEUED: 1, J.RUNNING: 0, J.SUCCEEDED: 1, J.FAILED: 1, J.CANCELLED: 1}
    assert {status: store.count(status, "alice") for status in J.STATUSES} == \
        {J.QUEUED: 0, J.RUNNING: 0, J.SUCCEEDED: 1, J.FAILED: 1, J.CANCELLED: 0}
    assert store.count(J.CANCELLED, "bob") == 1 and store.count(J.SUCCEEDED, "bob") == 0
    assert store.get(n1.id).status == J.QUEUED
    with pytest.raises(ValueError, match="bogus"):
        store.count("bogus")


# --------------------------------------------------------------------------------------------- caps

def test_the_queue_cap_counts_queued_jobs_only_and_a_refused_job_leaves_nothing(backend, store):
    first = submit(store, max_queued=2)
    submit(store, max_queued=2)
    with pytest.raises(QueueFull) as info:
        submit(store, max_queued=2, job_id="refused-job-0123456789")
    assert (info.value.queued, info.value.limit, info.value.owner) == (2, 2, None)
    assert "MAX_QUEUED_JOBS)" in str(info.value)
    assert store.get("refused-job-0123456789") is None and backend.traces("refused-job-0123456789") == []
    assert store.read_file("refused-job-0123456789", "content.png") is None
    assert store.list(10, 0)[1] == 2 and store.count(J.QUEUED) == 2
    backend.start(first.id, "w")
    assert submit(store, max_queued=2).status == J.QUEUED  # a running job frees a place


def test_the_per_owner_cap_refuses_that_owner_only(backend, store):
    a1, a2 = submit(store, "alice", per_owner=2), submit(store, "alice", per_owner=2)
    with pytest.raises(QueueFull) as info:
        submit(store, "alice", per_owner=2, job_id="refused-alice-0123456789")
    assert (info.value.queued, info.value.limit, info.value.owner) == (2, 2, "alice")
    assert "MAX_QUEUED_JOBS_PER_OWNER" in str(info.value)
    assert backend.traces("refused-alice-0123456789") == [] and store.list(10, 0, owner="alice")[1] == 2
    # the others are unaffected, and so are jobs without an owner (the cap is per owner)
    assert submit(store, "bob", per_owner=2).owner == "bob"
    assert all(submit(store, None, per_owner=2).owner is None for _ in range(3))
    # a job of hers that starts, or that she cancels, frees one of her places
    backend.start(a1.id, "w")
    a3 = submit(store, "alice", per_owner=2)
    store.cancel(a2.id)
    submit(store, "alice", per_owner=2)
    assert store.count(J.QUEUED, "alice") == 2
    assert store.get(a3.id).status == J.QUEUED


def test_the_global_cap_still_applies_to_an_owner_below_her_share(store):
    submit(store, "alice", per_owner=3)
    submit(store, "bob", per_owner=3)
    with pytest.raises(QueueFull) as info:
        submit(store, "alice", max_queued=2, per_owner=3)
    assert (info.value.queued, info.value.limit, info.value.owner) == (2, 2, None)
    submit(store, "alice", max_queued=3, per_owner=2)
    with pytest.raises(QueueFull) as info:  # both full (3 queued, 2 of them hers): the queue is the one reported
        submit(store, "alice", max_queued=3, per_owner=2)
    assert (info.value.limit, info.value.owner) == (3, None)


# --------------------------------------------------------------------------------------------- a worker's writes

def test_progress_and_finish_are_seen_by_get(backend, store):
    job = submit(store, "alice")
    running = backend.start(job.id, "w")
    assert (running.status, running.worker, running.attempts, running.queue_position) == (J.RUNNING, "w", 1, None)
    assert running.started_at is not None and store.get(job.id) == running
    assert store.update_progress(job.id, 1, 3, {"content": 1.0, "total": 2.0}, b"preview1", "w")
    got = store.get(job.id)
    assert (got.step, got.total, got.fraction, got.losses, got.has_preview) == \
        (1, 3, 0.3333, {"content": 1.0, "total": 2.0}, True)
    assert store.read_file(job.id, J.PREVIEW_FILE) == b"preview1"
    assert store.update_progress(job.id, 2, 3, {"total": 1.5}, None, "w")
    assert store.get(job.id).has_preview and store.get(job.id).losses == {"total": 1.5}  # the preview is kept
    # another worker's writes are refused and change nothing
    assert not store.update_progress(job.id, 3, 3, None, b"theirs", "w2")
    assert store.should_stop(job.id, "w2") and not store.should_stop(job.id, "w")
    assert not store.finish(job.id, b"theirs", None, "w2")
    assert store.get(job.id).step == 2 and store.read_file(job.id, J.PREVIEW_FILE) == b"preview1"
    assert store.finish(job.id, b"result", {"total": 1.0}, "w")
    done = store.get(job.id)
    assert (done.status, done.step, done.losses, done.error, done.owner) == \
        (J.SUCCEEDED, 3, {"total": 1.0}, None, "alice")
    assert done.finished and done.finished_at >= done.started_at and done.fraction == 1.0
    assert store.read_file(job.id, J.RESULT_FILE) == b"result"
    assert store.should_stop(job.id, "w") and not store.update_progress(job.id, 3, 3, None, None, "w")
    assert not store.finish(job.id, b"again", None, "w") and store.read_file(job.id, J.RESULT_FILE) == b"result"
    assert store.mean_run_seconds() is not None
    assert store.finished_since(0) == [(job.id, J.SUCCEEDED, done.started_at, done.finished_at)]
    assert store.finished_since(done.finished_at) == []


def test_finish_without_losses_keeps_the_last_ones(backend, store):
    job = submit(store)
    backend.start(job.id, "w")
    store.update_progress(job.id, 2, 3, {"total": 1.5}, None, "w")
    assert store.finish(job.id, b"result", None, "w")
    assert store.get(job.id).losses == {"total": 1.5}


def test_fail_is_seen_by_get(backend, store):
    assert store.mean_run_seconds() is None
    job = submit(store, "bob")
    backend.start(job.id, "w")
    assert not store.fail(job.id, "not mine", "w2")
    assert store.fail(job.id, "boom", "w")
    failed = store.get(job.id)
    assert (failed.status, failed.error, failed.owner) == (J.FAILED, "boom", "bob")
    assert failed.finished_at is not None and store.read_file(job.id, J.RESULT_FILE) is None
    assert not store.fail(job.id, "twice", "w") and store.get(job.id).error == "boom"
    assert store.mean_run_seconds() is None  # only succeeded runs are timed
    assert [row[:2] for row in store.finished_since(0)] == [(job.id, J.FAILED)]


def test_writes_without_a_worker_id_apply_to_a_running_job(backend, store):
    job = submit(store)
    assert not store.update_progress(job.id, 1, 3, None, None)  # queued: nothing runs it yet
    backend.start(job.id, "w")
    assert not store.should_stop(job.id)
    assert store.update_progress(job.id, 1, 3, {"total": 2.0}, b"preview")
    assert store.get(job.id).step == 1 and store.read_file(job.id, J.PREVIEW_FILE) == b"preview"
    assert store.finish(job.id, b"result")
    assert store.get(job.id).status == J.SUCCEEDED and store.read_file(job.id, J.RESULT_FILE) == b"result"


def test_release_hands_a_job_back_without_using_an_attempt(backend, store):
    job = submit(store, "alice")
    backend.start(job.id, "w")
    store.update_progress(job.id, 1, 3, {"total": 2.0}, b"preview", "w")
    assert store.release("other") == [] and store.release("w", job.id) == [job.id]
    back = store.get(job.id)
    assert (back.status, back.attempts, back.worker, back.started_at, back.step, back.has_preview) == \
        (J.QUEUED, 0, None, None, 0, False)
    assert back.queue_position == 1 and back.owner == "alice" and store.count(J.QUEUED, "alice") == 1
    assert store.read_file(job.id, J.PREVIEW_FILE) is None
    assert store.release("w") == []  # no longer w's


# --------------------------------------------------------------------------------------------- cancel and delete

def test_cancel_a_queued_job_finishes_it_at_once(backend, store):
    a, b = submit(store), submit(store)
    cancelled = store.cancel(a.id)
    assert cancelled.status == J.CANCELLED and cancelled.finished_at is not None and cancelled.finished
    assert store.get(a.id).status == J.CANCELLED and store.get(a.id).queue_position is None
    assert store.get(b.id).queue_position == 1 and store.count(J.QUEUED) == 1
    backend.start(b.id, "w")  # the cancelled job is never run
    again = store.cancel(a.id)  # a finished job is answered unchanged
    assert (again.status, again.finished_at) == (J.CANCELLED, cancelled.finished_at)
    assert store.cancel("no-such-job") is None


def test_cancel_a_running_job_is_seen_by_its_worker(backend, store):
    job = submit(store)
    backend.start(job.id, "w")
    assert not store.should_stop(job.id, "w")
    cancelled = store.cancel(job.id)
    assert cancelled.status == J.CANCELLED and cancelled.finished_at is not None
    assert store.should_stop(job.id, "w") and store.get(job.id).cancel_requested
    assert store.count(J.RUNNING) == 0 and store.count(J.CANCELLED) == 1
    # every later write of the worker is ignored, and its result is discarded
    assert not store.update_progress(job.id, 2, 3, {"total": 1.0}, b"png", "w")
    assert not store.finish(job.id, b"png", None, "w")
    assert not store.mark_cancelled(job.id, "w")  # cancel() recorded it already
    assert store.read_file(job.id, J.RESULT_FILE) is None and store.get(job.id).status == J.CANCELLED


def test_a_worker_acknowledges_a_stop_with_mark_cancelled(backend, store):
    job = submit(store)
    backend.start(job.id, "w")
    assert not store.mark_cancelled(job.id, "w2")
    assert store.mark_cancelled(job.id, "w")
    assert store.get(job.id).status == J.CANCELLED and store.get(job.id).finished_at is not None


def test_delete_removes_a_finished_job_from_everywhere(backend, store):
    job = submit(store, "alice")
    with pytest.raises(ValueError, match="queued; cancel it first"):
        store.delete(job.id)
    backend.start(job.id, "w")
    with pytest.raises(ValueError, match="running; cancel it first"):
        store.delete(job.id)
    assert store.get(job.id).status == J.RUNNING  # refused: nothing changed
    store.finish(job.id, b"result", None, "w")
    kept = submit(store, "alice")
    assert store.delete(job.id)
    assert store.get(job.id) is None and store.read_file(job.id, J.RESULT_FILE) is None
    assert backend.traces(job.id) == []
    assert ids(store.list(10, 0)[0]) == [kept.id] and store.list(10, 0)[1] == 1
    assert ids(store.list(10, 0, owner="alice")[0]) == [kept.id] and store.list(10, 0, owner="alice")[1] == 1
    assert store.count(J.SUCCEEDED) == 0 and store.count(J.SUCCEEDED, "alice") == 0
    assert not store.delete(job.id) and not store.delete("no-such-job")


def test_a_cancelled_job_is_deleted_with_a_second_call(backend, store):
    job = submit(store, "bob")
    store.cancel(job.id)
    assert store.delete(job.id) and backend.traces(job.id) == []
    assert store.list(10, 0, owner="bob") == ([], 0) and store.list(10, 0) == ([], 0)


# --------------------------------------------------------------------------------------------- retention

def test_cleanup_removes_old_finished_jobs_from_every_listing(backend, store):
    old, recent, other = submit(store, "alice"), submit(store, "alice"), submit(store, "bob")
    anonymous = submit(store)
    for job in (old, recent, other, anonymous):
        backend.start(job.id, "w")
        assert store.finish(job.id, b"result", None, "w")
    waiting = submit(store, "alice")
    for job in (old, other, anonymous):
        backend.backdate(job.id, 100)
    assert store.cleanup(ttl_s=50) == 3
    for job in (old, other, anonymous):
        assert store.get(job.id) is None and store.read_file(job.id, J.RESULT_FILE) is None
        assert backend.traces(job.id) == []
    assert store.list(10, 0, owner="alice")[1] == 2
    assert ids(store.list(10, 0, owner="alice")[0]) == [waiting.id, recent.id]
    assert store.list(10, 0, owner="bob") == ([], 0)
    assert ids(store.list(10, 0)[0]) == [waiting.id, recent.id] and store.list(10, 0)[1] == 2
    assert store.read_file(recent.id, J.RESULT_FILE) == b"result"
    assert [row[0] for row in store.finished_since(0)] == [recent.id]
    assert store.cleanup(ttl_s=50) == 0
    time.sleep(0.01)
    assert store.cleanup(ttl_s=0) == 1 and store.get(recent.id) is None
    assert store.get(waiting.id).status == J.QUEUED  # unfinished jobs are never expired
    assert store.list(10, 0, owner="alice")[1] == 1


# --------------------------------------------------------------------------------------------- positions, estimates

def test_queue_positions_follow_starts_and_cancels(backend, store):
    a, b, c = submit(store), submit(store, "alice"), submit(store)
    assert [store.get(j.id).queue_position for j in (a, b, c)] == [1, 2, 3]
    backend.start(a.id, "w")
    assert store.get(a.id).queue_position is None
    assert [store.get(j.id).queue_position for j in (b, c)] == [1, 2]
    store.cancel(b.id)
    assert store.get(c.id).queue_position == 1
    d = submit(store)
    assert d.queue_position == 2 and store.get(d.id).queue_position == 2


def test_active_jobs_and_step_times_shared_by_every_handle(backend, store):
    a, b, c = submit(store), submit(store), submit(store)
    backend.start(a.id, "w1")
    active = store.active_jobs()
    assert [(j.id, j.status, j.queue_position) for j in active] == \
        [(a.id, J.RUNNING, None), (b.id, J.QUEUED, 1), (c.id, J.QUEUED, 2)]
    assert store.step_times() == {}

    # workers (threads here, each with its own handle) fold samples in at once: none is lost
    other = backend.another()
    try:
        record_step_times_at_once(store, other)
        store.record_step_times("cpu", [], head_s=0.3, tail_s=0.1)
        model = other.step_times()["cpu"]
        assert model.evals == 2 * 25 * 8 and model.jobs == 1 and model.head == 0.3 and model.tail == 0.1
        assert model.per_eval(0.01) == pytest.approx(0.05) and model.per_eval(0.05) == pytest.approx(0.15)
        assert ids(other.active_jobs()) == ids(active)
    finally:
        other.close()


def record_step_times_at_once(*queues) -> None:
    """Each queue (its own connection) records 25 x 8 step-time samples for "cpu", all from threads at once."""
    def record(queue):
        for _ in range(25):
            queue.record_step_times("cpu", [(0.01, 4, 0.2), (0.05, 4, 0.6)])

    threads = [threading.Thread(target=record, args=(queue,)) for queue in queues]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
