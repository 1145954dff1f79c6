"""Style jobs through a real uvicorn process: submit, SSE progress, cancel, a full queue, and restarts
(the server killed during a job) on the same DATA_DIR."""
import base64
import io
import json
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.test_e2e import start_server, stop, wait_until_ready
from tests.test_style_api import files, wait_for  # wait_for takes an httpx.Client too

pytestmark = pytest.mark.slow

JOB_TIMEOUT_S = 60
LONG_STEPS = 2000


STYLE_ENV = {"DEVICE": "cpu", "JOB_WORKERS": "1", "MAX_QUEUED_JOBS": "1"}


@contextmanager
def server(weights_dir: Path, data_dir: Path, log_path: Path, **env_overrides: str):
    """A real uvicorn with one style worker; yields an httpx client on it and the process."""
    process, base_url = start_server(weights_dir, data_dir, log_path, **{**STYLE_ENV, **env_overrides})
    try:
        wait_until_ready(process, base_url, log_path)
        with httpx.Client(base_url=base_url, timeout=30) as http:
            yield http, process
    finally:
        stop(process)


def submit(http: httpx.Client, steps: int) -> dict:
    response = http.post("/v1/style/jobs", files=files(), data={"size": "64", "steps": str(steps)})
    assert response.status_code == 202, response.text
    return response.json()


def finished(job: dict) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")


def read_events(http: httpx.Client, job_id: str, timeout: float = JOB_TIMEOUT_S) -> list[tuple[str, dict]]:
    """The whole event stream of a job, read as it arrives (bounded by `timeout`)."""
    events, kind = [], None
    deadline = time.monotonic() + timeout
    with http.stream("GET", f"/v1/style/jobs/{job_id}/events", timeout=httpx.Timeout(20.0)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            assert time.monotonic() < deadline, f"event stream still open after {timeout} s: {events[-3:]}"
            if line.startswith("event: "):
                kind = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[len("data: "):])))
    return events


def worker_pids(log_path: Path) -> list[int]:
    return [int(pid) for pid in re.findall(r"started style worker \S+ \(pid (\d+)\)", log_path.read_text())]


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in state  # a zombie has exited (reaping it is its new parent's business)


def wait_gone(pid: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone(pid):
            return
        time.sleep(0.1)
    raise AssertionError(f"worker process {pid} outlived its server")


def test_submit_stream_cancel_and_full_queue(tiny_weights_dir, tmp_path):
    log_path = tmp_path / "server.log"
    with server(tiny_weights_dir, tmp_path / "data", log_path) as (http, _):
        job = submit(http, steps=3)
        events = read_events(http, job["id"])
        kinds = [kind for kind, _ in events]
        assert kinds[0] == "status" and "progress" in kinds and kinds[-1] == "status", kinds
        assert events[-1][1]["status"] == "succeeded"
        assert [d["step"] for k, d in events if k == "progress"][-1] == 3
        result = http.get(f"/v1/style/jobs/{job['id']}/result")
        assert result.status_code == 200 and max(Image.open(io.BytesIO(result.content)).size) == 64

        long_job = submit(http, steps=LONG_STEPS)
        wait_for(http, long_job["id"], lambda j: j["status"] == "running" and j["progress"]["step"] >= 1)
        queued = submit(http, steps=2)
        assert queued["status"] == "queued" and queued["queue_position"] == 1
        full = http.post("/v1/style/jobs", files=files(), data={"size": "64", "steps": "2"})
        assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1

        cancelled = http.delete(f"/v1/style/jobs/{long_job['id']}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        # the worker drops the cancelled job within a step and runs the queued one
        assert wait_for(http, queued["id"], finished)["status"] == "succeeded"
        assert http.get(f"/v1/style/jobs/{long_job['id']}").json()["status"] == "cancelled"
        pids = worker_pids(log_path)
    assert pids and all(gone(pid) for pid in pids)  # a clean shutdown joins its workers


def test_restarts_requeue_then_fail_an_interrupted_job(tiny_weights_dir, tmp_path):
    data_dir, log_path = tmp_path / "data", tmp_path / "server.log"

    # 1st server: a long job running, a short one queued; the server is killed
    with server(tiny_weights_dir, data_dir, log_path) as (http, process):
        long_job = submit(http, steps=LONG_STEPS)
        wait_for(http, long_job["id"], lambda j: j["status"] == "running" and j["progress"]["step"] >= 1)
        short_job = submit(http, steps=2)
        process.kill()
        process.wait(timeout=10)
    for pid in worker_pids(log_path):
        wait_gone(pid)  # an orphaned worker notices and exits

    # 2nd server: the interrupted job is queued again at the front (attempt 2), never left running
    with server(tiny_weights_dir, data_dir, log_path) as (http, process):
        job = http.get(f"/v1/style/jobs/{long_job['id']}").json()
        assert job["status"] in ("queued", "running"), job
        assert "the server stopped while this job was running" in job["notice"]
        second = wait_for(http, long_job["id"], lambda j: j["status"] == "running" and j["progress"]["step"] >= 1)
        assert second["attempts"] == 2
        assert http.get(f"/v1/style/jobs/{short_job['id']}").json()["status"] == "queued"
        process.kill()
        process.wait(timeout=10)
    for pid in worker_pids(log_path):
        wait_gone(pid)

    # 3rd server: interrupted twice -> failed with a clear message; the queued job runs to completion
    with server(tiny_weights_dir, data_dir, log_path) as (http, _):
        failed = http.get(f"/v1/style/jobs/{long_job['id']}").json()
        assert failed["status"] == "failed", failed
        assert "the server stopped while this job was running" in failed["error"]
        assert http.get(f"/v1/style/jobs/{long_job['id']}/result").status_code == 410
        assert wait_for(http, short_job["id"], finished)["status"] == "succeeded"
        listed = http.get("/v1/style/jobs").json()
        assert listed["total"] == 2 and not any(j["status"] == "running" for j in listed["jobs"])


def big_png_batch(count: int, side: int) -> list[str]:
    canvas = Image.new("RGB", (side, side), "white")
    canvas.paste(Image.new("RGB", (side // 2, side // 3), "navy"), (side // 4, side // 3))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return [base64.b64encode(buffer.getvalue()).decode()] * count


def test_sigterm_finishes_in_flight_requests_and_requeues_the_running_job(tiny_weights_dir, tmp_path):
    data_dir, log_path = tmp_path / "data", tmp_path / "server.log"
    with server(tiny_weights_dir, data_dir, log_path) as (http, process):
        job = submit(http, LONG_STEPS)
        wait_for(http, job["id"], lambda j: j["status"] == "running" and j["progress"]["step"] > 0)
        # A batch of 64 large images takes a while to decode: SIGTERM arrives while it is in flight.
        with ThreadPoolExecutor(max_workers=1) as pool:
            in_flight = pool.submit(http.post, "/v1/objects/predict", json={"images": big_png_batch(64, 1500)})
            time.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            response = in_flight.result(timeout=60)
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 64
    assert response.elapsed.total_seconds() > 0.3, "the request finished before SIGTERM: nothing was in flight"

    with server(tiny_weights_dir, data_dir, log_path) as (http, _):
        resumed = http.get(f"/v1/style/jobs/{job['id']}").json()
        assert resumed["status"] in ("queued", "running"), resumed  # resumed, not failed, not stuck
        assert resumed["attempts"] <= 2 and resumed.get("error") is None
        http.delete(f"/v1/style/jobs/{job['id']}")  # no need to run 2,000 steps here
