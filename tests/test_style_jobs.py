"""The SQLite job store's own behaviour: its file and folders, claims oldest first (concurrent ones too), release in
place, recovery after a restart or a dead worker. What it shares with the Redis store is
tests/test_job_store_contract.py."""
import threading

import pytest

from app.style import jobs as J
from app.style.jobs import QueueFull
from app.style.sqlite_store import SQLiteJobStore

PARAMS = {"size": 64, "steps": 3}


@pytest.fixture
def store(tmp_path) -> SQLiteJobStore:
    s = SQLiteJobStore(tmp_path)
    yield s
    s.close()


def submit(store: SQLiteJobStore, max_queued: int = 100) -> J.Job:
    return store.submit(PARAMS, 3, ("content.png", b"content-bytes"),
                        [{"file": "style_0.png", "data": b"style-bytes"}, {"preset": "udnie"}], max_queued)


def test_one_sqlite_file_in_wal_mode(store, tmp_path):
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (tmp_path / "jobs.sqlite3").is_file()


def test_submit_writes_the_inputs_into_the_job_folder(store):
    job = submit(store)
    folder = store.files.job_dir(job.id)
    assert (folder / "content.png").read_bytes() == b"content-bytes"
    assert (folder / "style_0.png").read_bytes() == b"style-bytes"
    assert sorted(p.name for p in folder.iterdir()) == ["content.png", "style_0.png"]  # no temp file left
    with pytest.raises(QueueFull):
        submit(store, max_queued=1)
    assert [p.name for p in store.files.root.iterdir()] == [job.id]  # the refused job's folder was removed


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


def test_restart_recovery_requeues_once_then_fails(tmp_path):
    first = SQLiteJobStore(tmp_path)
    a, b = submit(first), submit(first)
    first.claim("old-worker")
    first.update_progress(a.id, 1, 3, {"total": 1.0}, b"p", "old-worker")
    first.close()  # the process "dies" with a running

    second = SQLiteJobStore(tmp_path)
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


def test_release_puts_a_job_back_in_its_old_place(store):
    first, second = submit(store), submit(store)
    store.claim("w")
    assert store.release("w") == [first.id]
    assert store.get(first.id).queue_position == 1 and store.get(second.id).queue_position == 2
    assert store.claim("w2").id == first.id


def test_concurrent_claims_never_share_a_job(tmp_path):
    setup = SQLiteJobStore(tmp_path)
    ids = {submit(setup).id for _ in range(40)}
    setup.close()
    claimed: list[list[str]] = [[], [], [], []]
    barrier = threading.Barrier(4)

    def claimer(index: int) -> None:
        own = SQLiteJobStore(tmp_path)  # its own connection
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


def test_a_full_sqlite_database_is_recognised_by_its_error_code(tmp_path):
    """The submit route answers 507 for a full data volume; SQLite says so by SQLITE_FULL, whatever its message."""
    import sqlite3

    from app.style.api.routes import _disk_full

    conn = sqlite3.connect(tmp_path / "full.sqlite3")
    conn.execute("CREATE TABLE t (data BLOB)")
    conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
    with pytest.raises(sqlite3.OperationalError) as full:
        conn.execute("INSERT INTO t VALUES (?)", (b"\0" * 100_000,))
    assert _disk_full(full.value)
    with pytest.raises(sqlite3.OperationalError) as other:
        conn.execute("SELECT * FROM missing_table")
    assert not _disk_full(other.value)
    assert _disk_full(OSError(28, "No space left on device")) and not _disk_full(OSError(13, "Permission denied"))
