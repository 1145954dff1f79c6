"""The SQLite job store: order, positions, cancellation, progress, recovery, retention, concurrent claims."""
import threading
import time

import pytest

from app.style import jobs as J
from app.style.jobs import JobQueue, QueueFull, SQLiteJobQueue

PARAMS = {"size": 64, "steps": 3}


@pytest.fixture
def store(tmp_path) -> SQLiteJobQueue:
    s = SQLiteJobQueue(tmp_path)
    yield s
    s.close()


def submit(store: SQLiteJobQueue, max_queued: int = 100) -> J.Job:
    return store.submit(PARAMS, 3, ("content.png", b"content-bytes"),
                        [{"file": "style_0.png", "data": b"style-bytes"}, {"preset": "udnie"}], max_queued)


def test_implements_the_protocol_and_uses_wal(store, tmp_path):
    assert isinstance(store, JobQueue)
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (tmp_path / "jobs.sqlite3").is_file()


def test_submit_writes_files_and_a_queued_row(store):
    job = submit(store)
    assert job.status == J.QUEUED and job.queue_position == 1 and job.step == 0 and job.total == 3
    assert len(job.id) >= 20 and job.id != submit(store).id
    folder = store.job_dir(job.id)
    assert (folder / "content.png").read_bytes() == b"content-bytes"
    assert (folder / "style_0.png").read_bytes() == b"style-bytes"
    assert job.inputs == {"content": "content.png", "styles": [{"file": "style_0.png"}, {"preset": "udnie"}]}
    assert not list(folder.glob("*.tmp"))
    assert store.get(job.id).params == PARAMS
    assert store.get("nope") is None


def test_claim_is_oldest_first_and_positions_follow(store):
    a, b, c = submit(store), submit(store), submit(store)
    assert [store.get(j.id).queue_position for j in (a, b, c)] == [1, 2, 3]
    claimed = store.claim("w1")
    assert claimed.id == a.id and claimed.status == J.RUNNING and claimed.worker == "w1" and claimed.attempts == 1
    assert claimed.started_at is not None
    assert store.get(a.id).queue_position is None
    assert [store.get(j.id).queue_position for j in (b, c)] == [1, 2]
    assert store.claim("w1").id == b.id and store.claim("w2").id == c.id
    assert store.claim("w1") is None


def test_queue_limit_counts_queued_jobs_only(store):
    submit(store, max_queued=2)
    submit(store, max_queued=2)
    with pytest.raises(QueueFull) as info:
        submit(store, max_queued=2)
    assert info.value.queued == 2 and info.value.limit == 2
    assert len(list(store.files_dir.iterdir())) == 2  # the refused job's files were removed
    store.claim("w")
    submit(store, max_queued=2)  # a running job frees a place


def test_list_is_newest_first_and_paged(store):
    ids = [submit(store).id for _ in range(5)]
    page, total = store.list(2, 0)
    assert total == 5 and [j.id for j in page] == ids[::-1][:2]
    page, _ = store.list(2, 4)
    assert [j.id for j in page] == [ids[0]] and page[0].queue_position == 1


def test_cancel_queued_finishes_it_at_once(store):
    a, b = submit(store), submit(store)
    cancelled = store.cancel(a.id)
    assert cancelled.status == J.CANCELLED and cancelled.finished_at is not None
    assert store.get(b.id).queue_position == 1
    assert store.claim("w").id == b.id
    assert store.cancel("nope") is None


def test_cancel_running_sets_the_flag_the_worker_sees(store):
    job = submit(store)
    store.claim("w")
    assert not store.should_stop(job.id, "w")
    assert store.cancel(job.id).status == J.CANCELLED
    assert store.should_stop(job.id, "w") and store.get(job.id).cancel_requested
    # every later write of the worker is ignored, and its result is discarded
    assert not store.update_progress(job.id, 2, 3, {"total": 1.0}, b"png", "w")
    assert not store.finish(job.id, b"png", None, "w")
    assert not (store.job_dir(job.id) / J.RESULT_FILE).exists()
    assert store.get(job.id).status == J.CANCELLED


def test_progress_preview_finish(store):
    job = submit(store)
    store.claim("w")
    assert store.update_progress(job.id, 1, 3, {"content": 1.0, "total": 2.0}, b"preview1", "w")
    got = store.get(job.id)
    assert (got.step, got.total, got.fraction, got.losses, got.has_preview) == (1, 3, 0.3333, {"content": 1.0,
                                                                                              "total": 2.0}, True)
    assert (store.job_dir(job.id) / J.PREVIEW_FILE).read_bytes() == b"preview1"
    assert store.update_progress(job.id, 2, 3, {"total": 1.5}, None, "w")
    assert store.get(job.id).has_preview  # kept from the earlier preview
    assert not store.update_progress(job.id, 3, 3, None, None, "another-worker")
    assert store.finish(job.id, b"result", {"total": 1.0}, "w")
    done = store.get(job.id)
    assert done.status == J.SUCCEEDED and done.step == 3 and done.finished_at and done.losses == {"total": 1.0}
    assert (store.job_dir(job.id) / J.RESULT_FILE).read_bytes() == b"result"


def test_fail_and_delete(store):
    job = submit(store)
    store.claim("w")
    with pytest.raises(ValueError):
        store.delete(job.id)  # unfinished jobs are cancelled, not deleted
    assert store.fail(job.id, "boom", "w")
    assert store.get(job.id).error == "boom" and store.get(job.id).status == J.FAILED
    assert store.delete(job.id)
    assert store.get(job.id) is None and not store.job_dir(job.id).exists()
    assert not store.delete(job.id)


def test_restart_recovery_requeues_once_then_fails(tmp_path):
    first = SQLiteJobQueue(tmp_path)
    a, b = submit(first), submit(first)
    first.claim("old-worker")
    first.update_progress(a.id, 1, 3, {"total": 1.0}, b"p", "old-worker")
    first.close()  # the process "dies" with a running

    second = SQLiteJobQueue(tmp_path)
    recovered = second.recover_orphans()
    assert [j.id for j in recovered] == [a.id]
    again = second.get(a.id)
    assert again.status == J.QUEUED and again.queue_position == 1 and again.step == 0 and not again.has_preview
    assert J.SERVER_STOPPED in again.error and again.attempts == 1
    assert second.get(b.id).queue_position == 2  # a kept its place at the front
    assert second.claim("new").id == a.id  # second attempt
    recovered = second.recover_orphans()
    failed = second.get(a.id)
    assert failed.status == J.FAILED and J.SERVER_STOPPED in failed.error and failed.finished_at
    assert recovered[0].status == J.FAILED
    assert not any(j.status == J.RUNNING for j in second.list(10, 0)[0])
    second.close()


def test_dead_worker_recovery_touches_only_its_jobs(store):
    a, b = submit(store), submit(store)
    store.claim("w1")
    store.claim("w2")
    recovered = store.recover_worker("w1", J.WORKER_DIED)
    assert [j.id for j in recovered] == [a.id] and store.get(a.id).status == J.QUEUED
    assert store.get(b.id).status == J.RUNNING


def test_release_hands_a_job_back_without_using_an_attempt(store):
    job = submit(store)
    store.claim("w")
    assert store.release("w") == [job.id]
    back = store.get(job.id)
    assert back.status == J.QUEUED and back.attempts == 0 and back.worker is None


def test_cleanup_deletes_old_finished_jobs_and_their_files(store):
    old, recent, waiting = submit(store), submit(store), submit(store)
    for job in (old, recent):
        assert store.claim("w").id == job.id
        store.finish(job.id, b"result", None, "w")
    store._conn.execute("UPDATE jobs SET finished_at = ? WHERE id = ?", (time.time() - 100, old.id))
    assert store.cleanup(ttl_s=50) == 1
    assert store.get(old.id) is None and not store.job_dir(old.id).exists()
    assert store.get(recent.id).status == J.SUCCEEDED and store.job_dir(recent.id).exists()
    assert store.get(waiting.id).status == J.QUEUED  # unfinished jobs are never expired


def test_concurrent_claims_never_share_a_job(tmp_path):
    setup = SQLiteJobQueue(tmp_path)
    ids = {submit(setup).id for _ in range(40)}
    setup.close()
    claimed: list[list[str]] = [[], [], [], []]
    barrier = threading.Barrier(4)

    def claimer(index: int) -> None:
        own = SQLiteJobQueue(tmp_path)  # its own connection
        barrier.wait(timeout=10)
        while (job := own.claim(f"w{index}")) is not None:
            claimed[index].append(job.id)
        own.close()

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    everything = [i for part in claimed for i in part]
    assert len(everything) == len(set(everything)) == 40 and set(everything) == ids


def test_active_jobs_and_step_times_shared_by_every_process(store, tmp_path):
    a, b, c = submit(store), submit(store), submit(store)
    store.claim("w1")
    active = store.active_jobs()
    assert [(j.id, j.status, j.queue_position) for j in active] == \
        [(a.id, J.RUNNING, None), (b.id, J.QUEUED, 1), (c.id, J.QUEUED, 2)]
    job = store.submit(PARAMS, 3, ("content.png", b"x"), [{"preset": "udnie"}], 100, content_size=(400, 300))
    assert store.get(job.id).inputs["content_size"] == [400, 300]

    # workers (threads here, each with its own connection) fold samples in at once: none is lost
    other = SQLiteJobQueue(tmp_path)

    record_step_times_at_once(store, other)
    store.record_step_times("cpu", [], head_s=0.3, tail_s=0.1)
    model = other.step_times()["cpu"]
    assert model.evals == 2 * 25 * 8 and model.jobs == 1 and model.head == 0.3 and model.tail == 0.1
    assert model.per_eval(0.01) == pytest.approx(0.05) and model.per_eval(0.05) == pytest.approx(0.15)
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
