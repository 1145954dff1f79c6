"""The Redis job store's own behaviour (JOB_BACKEND=redis) against a real redis-server: files and dispatch, claims
and duplicate deliveries, dead workers (retry, then fail), release to the back of the queue, result cap, records
that expire by themselves, outages, the API's janitor. What it shares with the SQLite store is
tests/test_job_store_contract.py."""
import secrets
import time

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.style import jobs as J
from app.style.redis_store import RedisJobStore, connect
from tests.conftest import make_settings, wait_until_ready
from tests.redis_server import redis_server_fixture
from tests.test_e2e import free_port
from tests.test_style_api import files

HEARTBEAT_S = 1.0


redis_server = redis_server_fixture("redis-store")


class Sent(list):
    """The job ids handed to Dramatiq, in order (the store's dispatch callback)."""


@pytest.fixture
def sent() -> Sent:
    return Sent()


@pytest.fixture
def store(redis_server, sent):
    queue = RedisJobStore(connect(redis_server.url), sent.append, namespace=f"test-{secrets.token_hex(4)}",
                          max_attempts=2, heartbeat_timeout_s=HEARTBEAT_S, result_ttl_s=60, result_max_bytes=1000)
    yield queue
    queue.close()


def submit(store, max_queued: int = 10) -> J.Job:
    return store.submit({"size": 32, "steps": 5}, 5, ("content.png", b"content-bytes"),
                        [{"file": "style_0.png", "data": b"style-bytes"}, {"preset": "starry-night"}], max_queued)


def test_submit_keeps_the_files_in_redis_and_sends_each_job_once(store, sent):
    a, b = submit(store), submit(store)
    assert sent == [a.id, b.id]
    assert store.client.hgetall(f"{store.ns}:job:{a.id}:files") == {b"content.png": b"content-bytes",
                                                                     b"style_0.png": b"style-bytes"}


def test_a_full_queue_refuses_and_leaves_nothing(store, sent):
    mine = store.submit({"size": 32}, 5, ("content.png", b"c"), [{"preset": "udnie"}], 10, owner="alice",
                        max_queued_per_owner=1)
    for max_queued, per_owner in ((1, 0), (10, 1)):  # the queue's cap, then alice's own (the Lua script's checks)
        with pytest.raises(J.QueueFull):
            store.submit({"size": 32}, 5, ("content.png", b"c"), [{"preset": "udnie"}], max_queued, owner="alice",
                         max_queued_per_owner=per_owner)
    assert sent == [mine.id]
    keys = store.client.keys(f"{store.ns}:job:*")
    assert len(keys) == 2  # the accepted job's record and files only
    assert store.client.zrange(f"{store.ns}:owned:alice", 0, -1) == [mine.id.encode()]


def test_claim_runs_a_job_once_and_drops_duplicate_deliveries(store):
    job, cancelled = submit(store), submit(store)
    outcome, claimed = store.claim_job(job.id, "w1")
    assert outcome == "claimed" and claimed.status == J.RUNNING and claimed.attempts == 1
    assert claimed.worker == "w1" and claimed.queue_position is None
    assert store.client.get(f"{store.ns}:worker:w1") == job.id.encode()
    assert store.claim_job(job.id, "w2") == ("busy", None)  # its worker is alive: a duplicate message
    assert store.claim_job("unknown", "w2") == ("gone", None)
    assert store.finish(job.id, b"png", {"total": 1.0}, "w1")
    assert store.claim_job(job.id, "w2") == ("finished", None)
    store.cancel(cancelled.id)
    assert store.claim_job(cancelled.id, "w2") == ("finished", None)  # the message of a cancelled job is dropped


def test_a_finished_job_drops_its_inputs_and_its_worker_goes_idle(store):
    job = submit(store)
    store.claim_job(job.id, "w1")
    assert store.finish(job.id, b"result", {"total": 1.0}, "w1")
    assert store.read_file(job.id, J.RESULT_FILE) == b"result"
    assert store.read_file(job.id, "content.png") is None  # inputs are dropped once a job ends
    assert store.client.get(f"{store.ns}:worker:w1") == b""  # idle
    other = submit(store)
    store.claim_job(other.id, "w2")
    store.client.delete(f"{store.ns}:worker:w2")  # w2's heartbeat expired, and then it finished anyway
    assert store.fail(other.id, "boom", "w2")
    assert store.client.exists(f"{store.ns}:worker:w2") == 0  # not brought back to life without a TTL


def test_a_dead_workers_job_is_retried_then_failed(store, sent):
    job = submit(store)
    store.claim_job(job.id, "w1")
    assert store.recover_dead_workers() == []  # w1's heartbeat is fresh
    time.sleep(HEARTBEAT_S + 0.2)  # w1 was killed: its key expires
    assert store.recover_dead_workers() == [(job.id, J.QUEUED)]
    requeued = store.get(job.id)
    assert requeued.status == J.QUEUED and requeued.queue_position == 1 and requeued.attempts == 1
    assert "stopped sending heartbeats" in requeued.error and "attempt 1 of 2" in requeued.error
    assert sent == [job.id, job.id]  # sent again
    outcome, retried = store.claim_job(job.id, "w2")
    assert outcome == "claimed" and retried.attempts == 2
    time.sleep(HEARTBEAT_S + 0.2)
    assert store.recover_dead_workers() == [(job.id, J.FAILED)]
    failed = store.get(job.id)
    assert failed.status == J.FAILED and "attempt 2 of 2" in failed.error and "submit it again" in failed.error
    assert store.claim_job(job.id, "w3") == ("finished", None)


def test_a_redelivered_job_of_a_dead_worker_is_retried_by_its_receiver(store):
    job = submit(store)
    store.claim_job(job.id, "w1")
    store.client.delete(f"{store.ns}:worker:w1")  # w1 died; the janitor has not run yet
    outcome, retried = store.claim_job(job.id, "w2")
    assert outcome == "retried" and retried.attempts == 2 and retried.worker == "w2"
    assert "attempt 1 of 2 was interrupted" in retried.error
    assert store.should_stop(job.id, "w1")  # if w1 was only cut off, it stops at its next step
    store.client.delete(f"{store.ns}:worker:w2")
    assert store.claim_job(job.id, "w3") == ("failed", None)
    assert store.get(job.id).status == J.FAILED


def test_release_hands_a_job_back_without_counting_the_attempt(store, sent):
    first, second = submit(store), submit(store)
    store.claim_job(first.id, "w1")
    assert store.release("w1", first.id) == [first.id]
    released = store.get(first.id)
    assert released.status == J.QUEUED and released.attempts == 0 and released.worker is None
    assert released.queue_position == 2 and store.get(second.id).queue_position == 1  # back of the queue
    assert sent[-1] == first.id
    assert store.release("w1", first.id) == []  # no longer w1's


def test_a_result_over_the_cap_fails_the_job_with_a_message(store):
    job = submit(store)
    store.claim_job(job.id, "w1")
    assert store.finish(job.id, b"x" * 1001, None, "w1")
    failed = store.get(job.id)
    assert failed.status == J.FAILED and "STYLE_RESULT_MAX_BYTES" in failed.error
    assert store.read_file(job.id, J.RESULT_FILE) is None


def test_finished_records_expire_by_themselves_and_leave_the_listings(store):
    owned = [store.submit({"size": 32, "steps": 5}, 5, ("content.png", b"c"), [{"preset": "udnie"}], 10,
                          owner="alice") for _ in range(4)]
    waiting = submit(store)
    for job in owned:
        store.claim_job(job.id, "w1")
        store.finish(job.id, b"png", None, "w1")
    assert 0 < store.client.pttl(f"{store.ns}:job:{owned[0].id}")  # Redis drops them even if no replica cleans up
    for job in owned[1:3]:  # as Redis does once that TTL is over, before any cleanup() ran
        store.client.delete(f"{store.ns}:job:{job.id}", f"{store.ns}:job:{job.id}:files")
    page, total = store.list(2, 0, owner="alice")  # the page is read again past the expired ids
    assert [j.id for j in page] == [owned[3].id, owned[0].id] and total == 2
    assert store.count(J.SUCCEEDED) == 2 and store.count(J.SUCCEEDED, "alice") == 2
    jobs, total = store.list(10, 0)
    assert [j.id for j in jobs] == [waiting.id, owned[3].id, owned[0].id] and total == 3
    assert all(store.client.zscore(f"{store.ns}:finished", job.id) is None for job in owned[1:3])


def test_an_unreachable_redis_is_reported_quickly(sent):
    store = RedisJobStore(connect(f"redis://127.0.0.1:{free_port()}/0"), sent.append)
    started = time.monotonic()
    for call in (lambda: store.get("x"), lambda: store.count(J.QUEUED), lambda: submit(store)):
        with pytest.raises(J.JobStoreUnavailable, match="unreachable"):
            call()
    assert time.monotonic() - started < 5
    assert sent == []


def test_the_api_janitor_deletes_jobs_after_result_ttl(redis_server, tiny_weights_dir, tmp_path):
    settings = make_settings(tiny_weights_dir, tmp_path, job_backend="redis", redis_url=redis_server.url,
                             redis_namespace=f"ttl-{secrets.token_hex(4)}", result_ttl=1)
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        job = client.post("/v1/style/jobs", files=files(), data={"size": "64", "steps": "2"}).json()
        assert client.delete(f"/v1/style/jobs/{job['id']}").json()["status"] == "cancelled"
        deadline = time.monotonic() + 10
        while client.get(f"/v1/style/jobs/{job['id']}").status_code == 200:
            assert time.monotonic() < deadline, "the cancelled job outlived RESULT_TTL"
            time.sleep(0.2)
        assert client.get(f"/v1/style/jobs/{job['id']}").status_code == 404
        assert client.get("/v1/style/jobs").json()["total"] == 0


def test_the_api_answers_503_for_jobs_while_redis_is_down(tiny_weights_dir, tmp_path):
    settings = make_settings(tiny_weights_dir, tmp_path, job_backend="redis",
                             redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        for method, path in (("GET", "/v1/style/jobs"), ("GET", "/v1/style/jobs/some-id"),
                             ("DELETE", "/v1/style/jobs/some-id"), ("GET", "/v1/style/jobs/some-id/result")):
            response = client.request(method, path)
            assert response.status_code == 503 and "Redis" in response.json()["detail"], (path, response.text)
            assert response.headers["retry-after"] == "2"
        submitted = client.post("/v1/style/jobs", files=files(), data={"size": "64", "steps": "2"})
        assert submitted.status_code == 503
        assert client.get("/v1/style/presets").status_code == 200  # needs no store
        assert client.post("/v1/sentiment/predict", json={"text": "great"}).status_code == 200
        assert client.get("/metrics").status_code == 200


def test_a_full_redis_refuses_a_job_cleanly(store, sent):
    used = store.client.info("memory")["used_memory"]
    store.client.config_set("maxmemory", used + 256 * 1024)  # noeviction is Redis's default policy
    try:
        with pytest.raises(J.JobStoreFull, match="full"):
            store.submit({"size": 32}, 5, ("content.png", b"x" * (2 * 1024 * 1024)), [{"preset": "udnie"}], 10)
    finally:
        store.client.config_set("maxmemory", 0)
    assert sent == [] and store.list(10, 0) == ([], 0)
    assert submit(store).status == J.QUEUED  # room again: accepted


def test_worker_devices_of_live_workers_only(store):
    store.client.set(f"{store.ns}:worker:w1", "")  # alive, without the 1 s heartbeat TTL of these tests
    store.register_worker("w1", "cpu")
    store.register_worker("w-gone", "cuda:Some GPU")
    assert [(w["id"], w["device"]) for w in store.workers()] == [("w1", "cpu")]
    assert store.forget_gone_workers() == 1
    assert store.client.hkeys(f"{store.ns}:worker_devices") == [b"w1"]
