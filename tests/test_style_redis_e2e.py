"""JOB_BACKEND=redis end to end: a real redis-server, two API replicas (uvicorn) and two `python -m app.worker`
processes. A job submitted on one replica is polled, streamed, fetched and cancelled on the other; a worker killed
with SIGKILL mid-job has its job retried on the other worker, then failed after JOB_MAX_ATTEMPTS; Redis restarted
under the replicas gives 503 on the job routes only, and everything recovers by itself."""
import os
import secrets
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.redis_server import RedisServer
from tests.test_e2e import REPO_ROOT, start_server, stop, wait_until_ready
from tests.test_style_api import files, wait_for
from tests.test_style_e2e import read_events

pytestmark = pytest.mark.slow

HEARTBEAT_S = 3
WORKER_START_TIMEOUT_S = 60
SHORT_STEPS, LONG_STEPS = 20, 2000


def finished(job: dict) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")


class Workers:
    """`python -m app.worker` processes, logging to files; each one's id is <host>-<pid>-<device>."""

    def __init__(self, env: dict, folder: Path):
        self.env = env
        self.folder = folder
        self.processes: list[subprocess.Popen] = []

    def start(self) -> subprocess.Popen:
        log_path = self.folder / f"worker-{len(self.processes)}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen([sys.executable, "-m", "app.worker"], cwd=REPO_ROOT, env=self.env,
                                       stdout=log, stderr=subprocess.STDOUT)
        process.log_path = log_path
        self.processes.append(process)
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while "listening on" not in log_path.read_text():
            assert process.poll() is None, f"worker exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"worker not ready:\n{log_path.read_text()}"
            time.sleep(0.1)
        return process

    def alive(self) -> list[subprocess.Popen]:
        return [p for p in self.processes if p.poll() is None]

    def top_up(self, count: int = 2) -> None:
        for _ in range(count - len(self.alive())):
            self.start()

    def stop_all(self) -> None:
        for process in self.alive():
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                raise AssertionError(f"worker ignored SIGTERM:\n{process.log_path.read_text()}")


class Cluster:
    def __init__(self, redis_server: RedisServer, replicas: list[httpx.Client], workers: Workers, namespace: str):
        self.redis = redis_server
        self.a, self.b = replicas
        self.workers = workers
        self.namespace = namespace

    def worker_pid(self, job_id: str) -> int:
        """The pid of the worker that runs `job_id`, from the job's record in Redis."""
        client = self.redis.client()
        worker = client.hget(f"{self.namespace}:job:{job_id}", "worker").decode()
        client.close()
        return int(worker.split("-")[-2])


@pytest.fixture(scope="module")
def cluster(tiny_weights_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("redis-e2e")
    redis_server = RedisServer(folder / "redis")
    namespace = f"e2e-{secrets.token_hex(4)}"
    env = {"JOB_BACKEND": "redis", "REDIS_URL": redis_server.url, "REDIS_NAMESPACE": namespace, "DEVICE": "cpu",
           "JOB_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_S), "JOB_MAX_ATTEMPTS": "2", "MAX_QUEUED_JOBS": "8",
           "TORCH_THREADS": "1"}
    with ExitStack() as stack:
        redis_server.start()
        stack.callback(redis_server.stop)
        workers = Workers({**os.environ, **env}, folder)
        stack.callback(workers.stop_all)
        replicas = []
        for name in ("a", "b"):
            log_path = folder / f"api-{name}.log"
            process, base_url = start_server(tiny_weights_dir, folder / f"data-{name}", log_path, **env)
            stack.callback(stop, process)
            wait_until_ready(process, base_url, log_path)
            replicas.append(stack.enter_context(httpx.Client(base_url=base_url, timeout=30)))
        workers.top_up(2)
        yield Cluster(redis_server, replicas, workers, namespace)


def submit(http: httpx.Client, steps: int) -> dict:
    response = http.post("/v1/style/jobs", files=files(), data={"size": "64", "steps": str(steps)})
    assert response.status_code == 202, response.text
    return response.json()


def running(job: dict) -> bool:
    return job["status"] == "running" and job["progress"]["step"] >= 2


def test_a_job_submitted_on_one_replica_is_followed_on_the_other(cluster):
    job = submit(cluster.a, SHORT_STEPS)
    events = read_events(cluster.b, job["id"])
    assert events[-1] == ("status", events[-1][1]) and events[-1][1]["status"] == "succeeded", events[-3:]
    assert [d["step"] for kind, d in events if kind == "progress"][-1] == SHORT_STEPS
    results = [http.get(f"/v1/style/jobs/{job['id']}/result") for http in (cluster.a, cluster.b)]
    assert all(r.status_code == 200 and r.headers["content-type"] == "image/png" for r in results)
    assert results[0].content == results[1].content and results[0].content.startswith(b"\x89PNG")
    assert cluster.b.get(f"/v1/style/jobs/{job['id']}/preview").status_code == 200
    assert job["id"] in [j["id"] for j in cluster.b.get("/v1/style/jobs").json()["jobs"]]


def test_readiness_and_time_estimates_on_every_replica(cluster):
    from datetime import datetime

    def epoch(iso: str) -> float:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()

    for http in (cluster.a, cluster.b):  # workers warmed up before their first heartbeat: live means ready
        body = wait_for_status(http, "/readyz", 200).json()
        deadline = time.monotonic() + 10
        while body["style"] != "ready" and time.monotonic() < deadline:
            time.sleep(0.2)
            body = http.get("/readyz").json()
        assert body["status"] == "ready" and body["style"] == "ready", body
    estimate = cluster.b.get("/v1/style/estimate", params={"size": 64, "steps": SHORT_STEPS}).json()
    assert estimate["workers"] == 2 and estimate["device"] == "cpu" and estimate["measured"], estimate
    client = cluster.redis.client()
    try:  # the model lives in Redis, so every replica prices jobs the same
        assert client.hget(f"{cluster.namespace}:step_times", "cpu") is not None
        assert sorted(set(client.hvals(f"{cluster.namespace}:worker_devices"))) == [b"cpu"]
    finally:
        client.close()
    job = submit(cluster.a, SHORT_STEPS)
    assert isinstance(job["eta_s"], float)
    seen = []
    done = wait_for(cluster.b, job["id"], lambda j: seen.append(j) or finished(j))
    assert done["status"] == "succeeded" and done["eta_s"] is None
    assert all(isinstance(j["eta_s"], float) for j in seen if not finished(j))
    measured = epoch(done["finished_at"]) - epoch(done["started_at"])
    assert 1 / 3 <= measured / estimate["run_s"] <= 3, (estimate, measured)


def test_queue_positions_and_cancel_work_from_either_replica(cluster):
    first, second = submit(cluster.a, LONG_STEPS), submit(cluster.a, LONG_STEPS)
    for job in (first, second):  # two workers: both run at once
        wait_for(cluster.b, job["id"], running)
    waiting = submit(cluster.a, LONG_STEPS)
    assert cluster.b.get(f"/v1/style/jobs/{waiting['id']}").json()["queue_position"] == 1

    assert cluster.b.delete(f"/v1/style/jobs/{waiting['id']}").json()["status"] == "cancelled"
    cancelled = cluster.b.delete(f"/v1/style/jobs/{first['id']}").json()
    assert cancelled["status"] == "cancelled"
    # its worker stops within a step and takes the next job, while the other is still busy
    short = submit(cluster.a, SHORT_STEPS)
    wait_for(cluster.b, short["id"], lambda j: j["status"] != "queued", timeout=10)
    assert wait_for(cluster.b, short["id"], finished, timeout=30)["status"] == "succeeded"
    assert cluster.a.get(f"/v1/style/jobs/{second['id']}").json()["status"] == "running"
    assert cluster.a.delete(f"/v1/style/jobs/{second['id']}").json()["status"] == "cancelled"
    assert cluster.a.get(f"/v1/style/jobs/{first['id']}").json()["progress"]["step"] < LONG_STEPS


def test_a_killed_worker_s_job_is_retried_then_failed(cluster):
    job = submit(cluster.a, 400)
    wait_for(cluster.b, job["id"], running)
    killed = cluster.worker_pid(job["id"])
    os.kill(killed, signal.SIGKILL)
    retried = wait_for(cluster.b, job["id"], lambda j: j["attempts"] == 2 and running(j), timeout=30)
    assert "stopped sending heartbeats" in retried["notice"] and "attempt 1 of 2" in retried["notice"]
    assert cluster.worker_pid(job["id"]) != killed  # on the other worker
    assert wait_for(cluster.a, job["id"], finished, timeout=60)["status"] == "succeeded"
    assert cluster.b.get(f"/v1/style/jobs/{job['id']}/result").status_code == 200

    cluster.workers.top_up(2)
    doomed = submit(cluster.b, LONG_STEPS)
    wait_for(cluster.a, doomed["id"], running)
    os.kill(cluster.worker_pid(doomed["id"]), signal.SIGKILL)
    wait_for(cluster.a, doomed["id"], lambda j: j["attempts"] == 2 and running(j), timeout=30)
    os.kill(cluster.worker_pid(doomed["id"]), signal.SIGKILL)
    failed = wait_for(cluster.b, doomed["id"], finished, timeout=30)
    assert failed["status"] == "failed" and "attempt 2 of 2" in failed["error"], failed
    cluster.workers.top_up(2)


def test_a_worker_stopped_with_sigterm_hands_its_job_to_another(cluster):
    job = submit(cluster.a, LONG_STEPS)
    wait_for(cluster.b, job["id"], running)
    leaving = cluster.worker_pid(job["id"])
    process = next(p for p in cluster.workers.alive() if p.pid == leaving)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    taken = wait_for(cluster.b, job["id"], lambda j: running(j) and cluster.worker_pid(j["id"]) != leaving,
                     timeout=30)
    assert taken["attempts"] == 1  # a handover is not a failed attempt
    assert cluster.a.delete(f"/v1/style/jobs/{job['id']}").json()["status"] == "cancelled"
    cluster.workers.top_up(2)


def test_redis_restart_gives_503_on_job_routes_only_and_recovers(cluster):
    before = submit(cluster.a, SHORT_STEPS)
    wait_for(cluster.a, before["id"], finished)
    through = submit(cluster.a, LONG_STEPS)  # runs through the outage, watched by an event stream
    wait_for(cluster.b, through["id"], running)
    stream = ThreadPoolExecutor(1).submit(read_events, cluster.b, through["id"], 90)
    time.sleep(0.5)
    cluster.redis.stop()
    for http in (cluster.a, cluster.b):
        started = time.monotonic()
        down = http.get("/v1/style/jobs")
        assert down.status_code == 503 and "Redis" in down.json()["detail"], down.text
        assert down.headers["retry-after"] and time.monotonic() - started < 5
        assert http.post("/v1/style/jobs", files=files(), data={"steps": "2"}).status_code == 503
        assert http.post("/v1/sentiment/predict", json={"text": "a good film"}).status_code == 200
        assert http.get("/readyz").status_code == 200

    cluster.redis.start()  # same port and append-only file: the jobs are still there
    for http in (cluster.a, cluster.b):
        back = wait_for_status(http, f"/v1/style/jobs/{before['id']}", 200)
        assert back.json()["status"] == "succeeded"
    resumed = wait_for(cluster.a, through["id"], running)["progress"]["step"]
    assert wait_for(cluster.a, through["id"], lambda j: j["progress"]["step"] > resumed)["attempts"] == 1
    assert cluster.a.delete(f"/v1/style/jobs/{through['id']}").json()["status"] == "cancelled"
    events = stream.result(timeout=30)  # the stream outlived the outage and ended with the job
    assert events[-1][0] == "status" and events[-1][1]["status"] == "cancelled", events[-3:]
    after = submit(cluster.b, SHORT_STEPS)  # the workers reconnected by themselves
    assert wait_for(cluster.a, after["id"], finished, timeout=60)["status"] == "succeeded"


def wait_for_status(http: httpx.Client, path: str, status: int, timeout: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = http.get(path)
        if response.status_code == status or time.monotonic() > deadline:
            assert response.status_code == status, response.text
            return response
        time.sleep(0.2)


def test_one_worker_command_runs_a_process_per_device(cluster, tmp_path):
    """`--devices cpu,cpu` stands in for two GPUs: a child per device, a job each at once, SIGTERM stops all."""
    from app.core.config import Settings
    from app.style.dispatch import make_broker, redis_store

    namespace = f"devices-{secrets.token_hex(4)}"
    env = {**cluster.workers.env, "REDIS_NAMESPACE": namespace}
    settings = Settings(job_backend="redis", redis_url=cluster.redis.url, redis_namespace=namespace)
    broker = make_broker(settings)
    store = redis_store(settings, broker)
    log_path = tmp_path / "devices.log"
    with open(log_path, "ab") as log:
        parent = subprocess.Popen([sys.executable, "-m", "app.worker", "--devices", "cpu,cpu"], cwd=REPO_ROOT,
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while len(store.workers()) < 2:
            assert parent.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        jobs = [store.submit({"size": 64, "steps": LONG_STEPS}, LONG_STEPS, ("content.png", files()[0][1][1]),
                             [{"preset": "starry_night"}], max_queued=8) for _ in range(2)]
        deadline = time.monotonic() + 60
        while sorted(w["job"] or "" for w in store.workers()) != sorted(job.id for job in jobs):
            assert time.monotonic() < deadline, (store.workers(), log_path.read_text())
            time.sleep(0.2)
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=45) == 0, log_path.read_text()
        assert store.workers() == []  # both children left the live list
        assert [store.get(job.id).status for job in jobs] == ["queued", "queued"]  # handed back
    finally:
        if parent.poll() is None:
            parent.kill()
        store.close()
        broker.close()
