"""A real server process (`python -m app`, as `make serve` starts it) over the tiny weights: startup, every predict
endpoint, refusal, clean shutdown."""
import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.test_api import encode, digit_image

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(port: int) -> list[str]:
    """The server started exactly as `make serve` starts it (the launcher, app/server/launch.py), on loopback."""
    return [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port)]


def start_server(weights_dir: Path, data_dir: Path, log_path: Path, **env_overrides: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "WEIGHTS_DIR": str(weights_dir), "DATA_DIR": str(data_dir), **env_overrides}
    with open(log_path, "ab") as log:  # a file, not a pipe, so a chatty server can never block on a full pipe
        process = subprocess.Popen(server_command(port), cwd=REPO_ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}"


def wait_until_ready(process: subprocess.Popen, base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"server not ready after {START_TIMEOUT_S} s:\n{log_path.read_text()}")


def stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)
            raise AssertionError("server ignored SIGTERM and had to be killed")
    return process.returncode


@contextmanager
def running_server(weights_dir: Path, tmp_path: Path, **env_overrides: str):
    log_path = tmp_path / "server.log"
    process, base_url = start_server(weights_dir, tmp_path / "data", log_path, **env_overrides)
    try:
        wait_until_ready(process, base_url, log_path)
        yield process, base_url, log_path
    finally:
        stop(process)


@pytest.fixture(scope="module")
def server(tiny_weights_dir, tmp_path_factory):
    with running_server(tiny_weights_dir, tmp_path_factory.mktemp("e2e")) as (process, base_url, log_path):
        with httpx.Client(base_url=base_url, timeout=30) as http:
            yield http, process, log_path


def test_health_and_models(server):
    http, _, _ = server
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").json()["status"] == "ready"
    assert len(http.get("/v1/models").json()["models"]) == 4


@pytest.mark.parametrize("task", ["digits", "objects"])
def test_image_endpoints_over_http(server, task):
    http, _, _ = server
    image = encode(digit_image(7, mode="RGB"))
    by_upload = http.post(f"/v1/{task}/predict", files={"file": ("seven.png", image, "image/png")})
    assert by_upload.status_code == 200, by_upload.text
    by_json = http.post(f"/v1/{task}/predict", json={"image": base64.b64encode(image).decode()})
    assert by_json.json() == by_upload.json()
    batch = http.post(f"/v1/{task}/predict", json={"images": [base64.b64encode(image).decode()] * 3},
                      params={"top_k": 1})
    assert batch.status_code == 200 and len(batch.json()["results"]) == 3


def test_sentiment_endpoint_over_http(server):
    http, _, _ = server
    single = http.post("/v1/sentiment/predict", json={"text": "a good film"})
    assert single.status_code == 200 and single.json()["label"] in ("negative", "positive")
    plain = http.post("/v1/sentiment/predict", content=b"a good film", headers={"content-type": "text/plain"})
    assert plain.json() == single.json()
    batch = http.post("/v1/sentiment/predict", json={"texts": ["good", "bad"]})
    assert len(batch.json()["results"]) == 2


def test_errors_over_http_are_json(server):
    http, _, _ = server
    response = http.post("/v1/digits/predict", content=b"<x/>", headers={"content-type": "application/xml"})
    assert response.status_code == 415 and "unsupported content type" in response.json()["detail"]
    too_big = 11 * 1024 * 1024
    assert http.post("/v1/digits/predict", content=b"\0" * too_big,
                     headers={"content-type": "application/json"}).status_code == 413
    chunked = http.post("/v1/digits/predict", content=(b"A" * 65536 for _ in range(too_big // 65536)),
                        headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and "MAX_UPLOAD_BYTES" in chunked.json()["detail"]


def test_startup_logs_each_model(server):
    _, _, log_path = server
    log = log_path.read_text()
    for name in ("digits-cnn", "digits-mlp", "objects-resnet", "sentiment-lstm"):
        assert f"loaded {name} (" in log


def test_corrupt_weights_make_the_process_exit(tiny_weights_dir, tmp_path):
    weights_dir = shutil.copytree(tiny_weights_dir, tmp_path / "weights")
    (weights_dir / "sentiment-lstm.pt").write_bytes(b"not a checkpoint")
    log_path = tmp_path / "server.log"
    process, _ = start_server(weights_dir, tmp_path / "data", log_path)
    try:
        returncode = process.wait(timeout=START_TIMEOUT_S)
    finally:
        stop(process)
    log = log_path.read_text()
    assert returncode != 0, log
    assert "sentiment-lstm.pt: sha256 mismatch" in log


def test_sigterm_shuts_down_cleanly(tiny_weights_dir, tmp_path):
    with running_server(tiny_weights_dir, tmp_path) as (process, base_url, log_path):
        assert httpx.post(f"{base_url}/v1/sentiment/predict", json={"text": "fine"}, timeout=30).status_code == 200
        # uvicorn shuts down gracefully, then re-raises the signal so the exit status reports it.
        assert stop(process) in (0, -signal.SIGTERM)
    log = log_path.read_text()
    assert "Application shutdown complete" in log and "Traceback" not in log
