"""Faults against a real uvicorn over the tiny weights: the style worker killed (-9) during a job, the server
and its worker killed (-9) together with jobs queued, and a DATA_DIR that runs out of space.

tests/test_style_e2e.py covers a server killed twice during one job (re-queued, then failed); these extend it.
"""
import io
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from app.style.jobs import DB_NAME, WORKER_DIED
from tests.test_style_api import files, wait_for
from tests.test_style_e2e import LONG_STEPS, finished, server, submit, wait_gone

pytestmark = pytest.mark.slow

WAIT_S = 60


def style_workers(server_pid: int) -> list[int]:
    """The style worker processes: children of the server started by multiprocessing's spawn."""
    try:
        children = psutil.Process(server_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    pids = []
    for child in children:
        try:
            if "spawn_main" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                pids.append(child.pid)
        except psutil.Error:
            pass
    return pids


def one_worker(server_pid: int, not_pid: int | None = None) -> int:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        pids = [pid for pid in style_workers(server_pid) if pid != not_pid]
        if len(pids) == 1:
            return pids[0]
        time.sleep(0.1)
    raise AssertionError(f"no single style worker under server {server_pid}: {style_workers(server_pid)}")


def running(job: dict) -> bool:
    return job["status"] == "running" and job["progress"]["step"] >= 1


def integrity(data_dir: Path) -> str:
    with sqlite3.connect(f"file:{data_dir / DB_NAME}?mode=ro", uri=True) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def test_worker_killed_during_a_job_is_replaced_and_the_job_requeued_then_failed(tiny_weights_dir, tmp_path):
    with server(tiny_weights_dir, tmp_path / "data", tmp_path / "server.log", MAX_QUEUED_JOBS="8") as (http, process):
        long_job = submit(http, steps=LONG_STEPS)
        wait_for(http, long_job["id"], running, WAIT_S)
        short_job = submit(http, steps=2)
        first = one_worker(process.pid)
        os.kill(first, signal.SIGKILL)

        # re-queued at the front with a notice; a new worker (another pid) picks it up again
        second_run = wait_for(http, long_job["id"], lambda j: running(j) and j["attempts"] == 2, WAIT_S)
        assert WORKER_DIED in second_run["notice"], second_run
        second = one_worker(process.pid, not_pid=first)
        assert http.get(f"/v1/style/jobs/{short_job['id']}").json()["status"] == "queued"
        os.kill(second, signal.SIGKILL)

        # killed again: failed with a clear error, and the next job runs to completion on a third worker
        failed = wait_for(http, long_job["id"], finished, WAIT_S)
        assert failed["status"] == "failed" and WORKER_DIED in failed["error"], failed
        assert http.get(f"/v1/style/jobs/{long_job['id']}/result").status_code == 410
        assert wait_for(http, short_job["id"], finished, WAIT_S)["status"] == "succeeded"
        assert http.get(f"/v1/style/jobs/{short_job['id']}/result").status_code == 200
        assert process.poll() is None  # the API process never noticed beyond its supervisor


def test_server_and_worker_killed_together_lose_nothing(tiny_weights_dir, tmp_path):
    """Like the OOM killer taking the whole group: nothing lost, nothing left running, the database intact."""
    data_dir, log_path = tmp_path / "data", tmp_path / "server.log"
    with server(tiny_weights_dir, data_dir, log_path, MAX_QUEUED_JOBS="8") as (http, process):
        long_job = submit(http, steps=LONG_STEPS)
        wait_for(http, long_job["id"], running, WAIT_S)
        queued = [submit(http, steps=2) for _ in range(3)]
        worker = one_worker(process.pid)
        os.kill(worker, signal.SIGKILL)
        process.kill()
        process.wait(timeout=10)
    wait_gone(worker)
    assert integrity(data_dir) == "ok"

    with server(tiny_weights_dir, data_dir, log_path, MAX_QUEUED_JOBS="8") as (http, _):
        listed = http.get("/v1/style/jobs").json()
        assert listed["total"] == 4
        assert not any(j["status"] == "running" and j["attempts"] < 2 and j["id"] != long_job["id"]
                       for j in listed["jobs"])
        interrupted = http.get(f"/v1/style/jobs/{long_job['id']}").json()
        assert interrupted["status"] in ("queued", "running") and interrupted["notice"], interrupted
        # the interrupted job keeps its place at the front; cancel it so the queued ones run
        assert http.delete(f"/v1/style/jobs/{long_job['id']}").status_code == 200
        done = [wait_for(http, job["id"], finished, WAIT_S) for job in queued]
        assert [job["status"] for job in done] == ["succeeded"] * 3
        starts = [job["started_at"] for job in done]
        assert starts == sorted(starts)  # still first in, first out
    assert integrity(data_dir) == "ok"


def noise_png(side: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def small_volume(tmp_path):
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a 2 MiB tmpfs (needs root / CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_data_volume_is_a_clear_507_and_the_database_survives(tiny_weights_dir, tmp_path, small_volume):
    data_dir = small_volume / "data"
    with server(tiny_weights_dir, data_dir, tmp_path / "server.log", JOB_WORKERS="0",
                MAX_QUEUED_JOBS="1000") as (http, process):
        content = noise_png(300, seed=0)  # ~270 KB each: the 2 MiB volume fills within a few jobs
        accepted, refused = [], None
        for index in range(40):
            response = http.post("/v1/style/jobs", files=files(content=content), data={"size": "64", "steps": "2"})
            if response.status_code == 202:
                accepted.append(response.json()["id"])
                continue
            refused = response
            break
        assert accepted, "not even one job fitted on the volume"
        assert refused is not None, f"{len(accepted)} jobs of ~{len(content)} bytes fitted on a 2 MiB volume"
        assert refused.status_code == 507, refused.text
        assert "no space left" in refused.json()["detail"] and refused.headers.get("retry-after")
        # still serving: every job accepted before is readable, a second attempt is refused the same way
        for job_id in accepted:
            assert http.get(f"/v1/style/jobs/{job_id}").json()["status"] == "queued"
        assert http.get("/v1/style/jobs").json()["total"] == len(accepted)
        again = http.post("/v1/style/jobs", files=files(content=content), data={"size": "64", "steps": "2"})
        assert again.status_code == 507, again.text
        assert http.get("/healthz").status_code == 200
        assert integrity(data_dir) == "ok"
        # room again (a job deleted) -> jobs are accepted again
        assert http.delete(f"/v1/style/jobs/{accepted[0]}").status_code == 200
        assert http.delete(f"/v1/style/jobs/{accepted[0]}").status_code == 204
        small = http.post("/v1/style/jobs", files=files(), data={"size": "64", "steps": "2"})
        assert small.status_code == 202, small.text
    assert integrity(data_dir) == "ok"
