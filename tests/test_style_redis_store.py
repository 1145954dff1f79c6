"""The Redis job store (JOB_BACKEND=redis) against a real redis-server: records, queue order, claims and duplicate
deliveries, ownership of writes, cancel, dead workers (retry, then fail), release, result cap, RESULT_TTL, outages."""
import secrets
import time

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.style import jobs as J
from app.style.redis_queue import RedisJobQueue, connect
from tests.conftest import make_settings, wait_until_ready
from tests.redis_server import RedisServer
from tests.test_e2e import free_port
from tests.test_style_jobs import record_step_times_at_once
from tests.test_style_api import files

HEARTBEAT_S = 1.0


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis-store"))
    server.start()
    yield server
    server.stop()


class Sent(list):
    """The job ids handed to Dramatiq, in order (the store's dispatch callback)."""


@pytest.fixture
def sent() -> Sent:
    return Sent()


@pytest.fixture
def store(redis_server, sent):
    queue = RedisJobQueue(connect(redis_server.url), sent.append, namespace=f"test-{secrets.token_hex(4)}",
                          max_attempts=2, heartbeat_timeout_s=HEARTBEAT_S, result_ttl_s=60, result_max_bytes=1000)
    yield queue
    queue.close()


def submit(store, max_queued: int = 10) -> J.Job:
    return store.submit({"size": 32, "steps": 5}, 5, ("content.png", b"content-bytes"),
                        [{"file": "style_0.png", "data": b"style-bytes"}, {"preset": "starry-night"}], max_queued)


def test_submit_get_list_and_queue_positions(store, sent):
    a, b = submit(store), submit(store)
    assert (a.status, a.queue_position, b.queue_position) == (J.QUEUED, 1, 2)
    assert sent == [a.id, b.id]
    got = store.get(a.id)
    assert got.params == {"size": 32, "steps": 5} and got.total == 5 and got.attempts == 0
    assert got.inputs == {"content": "content.png", "styles": [{"file": "style_0.png"}, {"preset": "starry-night"}]}
    assert store.read_file(a.id, "content.png") == b"content-bytes"
    assert store.read_file(a.id, "style_0.png") == b"style-bytes"
    assert store.read_file(a.id, J.RESULT_FILE) is None
    jobs, total = store.list(10, 0)
    assert [j.id for j in jobs] == [b.id, a.id] and total == 2
    assert [j.id for j in store.list(1, 1)[0]] == [a.id]
    assert store.count(J.QUEUED) == 2 and store.count(J.RUNNING) == 0
    assert store.get("no-such-job") is None


def test_a_full_queue_refuses_and_leaves_nothing(store, sent):
    submit(store, max_queued=1)
    with pytest.raises(J.QueueFull):
        submit(store, max_queued=1)
    assert store.count(J.QUEUED) == 1 and store.list(10, 0)[1] == 1 and len(sent) == 1
    keys = store.client.keys(f"{store.ns}:job:*")
    assert len(keys) == 2  # the accepted job's record and files only


def test_claim_runs_a_job_once_and_drops_duplicate_deliveries(store):
    job = submit(store)
    outcome, claimed = store.claim_job(job.id, "w1")
    assert outcome == "claimed" and claimed.status == J.RUNNING and claimed.attempts == 1
    assert claimed.worker == "w1" and claimed.queue_position is None
    assert store.client.get(f"{store.ns}:worker:w1") == job.id.encode()
    assert store.claim_job(job.id, "w2") == ("busy", None)  # its worker is alive: a duplicate message
    assert store.claim_job("unknown", "w2") == ("gone", None)
    assert store.finish(job.id, b"png", {"total": 1.0}, "w1")
    assert store.claim_job(job.id, "w2") == ("finished", None)


def test_only_the_owner_writes_progress_and_results(store):
    job = submit(store)
    store.claim_job(job.id, "w1")
    assert not store.update_progress(job.id, 1, 5, {"total": 2.0}, b"preview", worker="w2")
    assert store.update_progress(job.id, 2, 5, {"total": 1.5}, b"preview", worker="w1")
    running = store.get(job.id)
    assert (running.step, running.losses, running.has_preview) == (2, {"total": 1.5}, True)
    assert store.read_file(job.id, J.PREVIEW_FILE) == b"preview"
    assert store.should_stop(job.id, "w2") and not store.should_stop(job.id, "w1")
    assert not store.finish(job.id, b"result", None, "w2")
    assert store.finish(job.id, b"result", {"total": 1.0}, "w1")
    done = store.get(job.id)
    assert (done.status, done.step, done.losses) == (J.SUCCEEDED, 5, {"total": 1.0})
    assert store.read_file(job.id, J.RESULT_FILE) == b"result"
    assert store.read_file(job.id, "content.png") is None  # inputs are dropped once a job ends
    assert store.mean_run_seconds() is not None
    assert [row[:2] for row in store.finished_since(0)] == [(job.id, J.SUCCEEDED)]
    assert store.client.get(f"{store.ns}:worker:w1") == b""  # idle


def test_cancel_a_queued_job_and_a_running_one(store):
    first, second, third = submit(store), submit(store), submit(store)
    cancelled = store.cancel(second.id)
    assert cancelled.status == J.CANCELLED and cancelled.finished_at is not None
    assert store.get(third.id).queue_position == 2
    assert store.claim_job(second.id, "w1") == ("finished", None)
    store.claim_job(first.id, "w1")
    assert store.cancel(first.id).status == J.CANCELLED
    assert store.should_stop(first.id, "w1")
    assert not store.update_progress(first.id, 1, 5, None, worker="w1")
    assert not store.mark_cancelled(first.id, "w1")  # cancel() already recorded it
    assert store.count(J.RUNNING) == 0 and store.count(J.QUEUED) == 1
    assert store.cancel("unknown") is None


def test_delete_only_finished_jobs(store):
    job = submit(store)
    with pytest.raises(ValueError, match="queued"):
        store.delete(job.id)
    store.cancel(job.id)
    assert store.delete(job.id)
    assert store.get(job.id) is None and store.list(10, 0) == ([], 0)
    assert not store.delete(job.id)


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


def test_results_expire_after_the_ttl(store):
    old, recent = submit(store), submit(store)
    for job in (old, recent):
        store.claim_job(job.id, "w1")
        store.finish(job.id, b"png", None, "w1")
    assert 0 < store.client.pttl(f"{store.ns}:job:{old.id}")  # Redis drops them even if no replica cleans up
    time.sleep(0.05)
    assert store.cleanup(ttl_s=0.0) == 2
    assert store.get(old.id) is None and store.read_file(old.id, J.RESULT_FILE) is None
    assert store.list(10, 0) == ([], 0)
    fresh = submit(store)
    store.claim_job(fresh.id, "w1")
    store.finish(fresh.id, b"png", None, "w1")
    assert store.cleanup(ttl_s=3600) == 0 and store.get(fresh.id).status == J.SUCCEEDED


def test_an_unreachable_redis_is_reported_quickly(sent):
    store = RedisJobQueue(connect(f"redis://127.0.0.1:{free_port()}/0"), sent.append)
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


def test_active_jobs_worker_devices_and_shared_step_times(store, redis_server):
    a, b = submit(store), submit(store)
    store.claim_job(a.id, "w1")
    assert [(j.id, j.status) for j in store.active_jobs()] == [(a.id, J.RUNNING), (b.id, J.QUEUED)]
    store.client.set(f"{store.ns}:worker:w1", a.id)  # alive, without the 1 s heartbeat TTL of these tests
    store.register_worker("w1", "cpu")
    store.register_worker("w-gone", "cuda:Some GPU")
    assert [(w["id"], w["device"]) for w in store.workers()] == [("w1", "cpu")]
    assert store.forget_gone_workers() == 1
    assert store.client.hkeys(f"{store.ns}:worker_devices") == [b"w1"]
    job = store.submit({"size": 32, "steps": 5}, 5, ("content.png", b"c"), [{"preset": "udnie"}], 10,
                       content_size=(640, 480))
    assert store.get(job.id).inputs["content_size"] == [640, 480]

    # two replicas' workers updating one device's model at once (optimistic transactions): nothing is lost
    other = RedisJobQueue(connect(redis_server.url), lambda job_id: None, namespace=store.ns)

    record_step_times_at_once(store, other)
    model = other.step_times()["cpu"]
    assert model.evals == 2 * 25 * 8
    assert model.per_eval(0.01) == pytest.approx(0.05) and model.per_eval(0.05) == pytest.approx(0.15)
    other.close()
