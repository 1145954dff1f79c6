"""The Python client (clients/python, `model_server_client`) against a real server process started as `make serve`
starts it, over the committed weights: every predict method with every input kind, sentiment, API keys, style jobs
followed with a progress bar, cancelled, followed through a TCP proxy that cuts the event stream (the client
reconnects) or refuses it (the client polls), a job whose streams are all taken (429: the client polls), the style
queue's 429 with Retry-After retried, and the models-loading 503 retried. A tiny HTTP server of the test's own
answers the retry cases the real server cannot be made to give on demand (an HTTP-date Retry-After, one too long to
wait for, a proxy's HTML 502)."""
from __future__ import annotations

import asyncio
import atexit
import email.utils
import importlib
import io
import json
import re
import socket
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from model_server_client import (APIError, AsyncClient, AuthenticationError, Client, InputError, JobCancelled, NotFound,
                                 ProgressBar, RateLimited, RetryPolicy, ServerError, ServiceUnavailable,
                                 TransportError, ValidationError, encode_png)
from tests.test_e2e import start_server, stop

pytestmark = [pytest.mark.slow, pytest.mark.real_weights]

REPO_ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = REPO_ROOT / "weights"
HELDOUT = REPO_ROOT / "data" / "heldout"
PHOTO = REPO_ROOT / "data" / "style" / "chelsea.png"
API_KEY = "client-test-key"
START_TIMEOUT_S = 90
JOB_TIMEOUT_S = 60
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SERVER_ENV = {
    "DEVICE": "cpu", "INFERENCE_BACKEND": "onnxruntime", "JOB_WORKERS": "1", "API_KEYS": f"tester:{API_KEY}", "STYLE_DEFAULT_SIZE": "64",
    "MAX_QUEUED_JOBS": "1", "MAX_QUEUED_JOBS_PER_OWNER": "0", "STREAMS_PER_JOB": "2",
}

if not (WEIGHTS / "manifest.json").exists():  # pragma: no cover - a clone without the committed weights
    pytest.skip("needs the committed weights in weights/", allow_module_level=True)


# --------------------------------------------------------------------------------------------- helpers

def heldout(name: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(HELDOUT / f"{name}.npz")
    return data["x"][:n], data["y"][:n]


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Server:
    url: str
    log_path: Path
    startup_retries: list = field(default_factory=list)
    startup_label: str | None = None

    def client(self, **kwargs) -> Client:
        return Client(self.url, kwargs.pop("api_key", API_KEY), **kwargs)


def wait_listening(process, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            httpx.get(f"{url}/healthz", timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError(f"server not listening after {START_TIMEOUT_S} s:\n{log_path.read_text()}")


@contextmanager
def real_server(tmp: Path, **env: str):
    """The server as `make serve` starts it (python -m app), with the committed weights. While its models load,
    a predict is sent with retries: the 503s it gets (with Retry-After) are recorded in `startup_retries`."""
    log_path = tmp / "server.log"
    process, url = start_server(WEIGHTS, tmp / "data", log_path, **{**SERVER_ENV, **env})
    try:
        wait_listening(process, url, log_path)
        server = Server(url, log_path)
        seven = png(heldout("mnist-test", 1)[0][0])
        with server.client(retries=RetryPolicy(attempts=60, max_wait_s=5), on_retry=server.startup_retries.append
                           ) as client:
            server.startup_label = client.predict_digit(seven).label
            client.wait_until_ready(timeout=START_TIMEOUT_S)
        yield server
    finally:
        stop(process)


def shared_server(request, tmp_path_factory):
    """One real server for test_client.py and test_client_cli.py (module fixture `client_server` in each): started
    by the first of them to run, handed on while a test still to run needs it, stopped after the last (at exit if
    the session ends early). pytest imports this file as `test_client` and the CLI tests import it as
    `tests.test_client`: both keep the server in the latter's SHARED."""
    shared = importlib.import_module("tests.test_client").SHARED
    if "server" not in shared:
        stack = ExitStack()
        shared["server"] = stack.enter_context(real_server(tmp_path_factory.mktemp("client")))
        shared["stack"] = stack
        atexit.register(stack.close)
    yield shared["server"]
    items = request.session.items
    last = max((i for i, item in enumerate(items) if item.path == request.node.path), default=len(items))
    if not any("client_server" in getattr(item, "fixturenames", ()) for item in items[last + 1:]):
        shared.pop("server")
        shared.pop("stack").close()


SHARED: dict = {}


@pytest.fixture(scope="module")
def client_server(request, tmp_path_factory):
    yield from shared_server(request, tmp_path_factory)


@pytest.fixture
def server(client_server):
    return client_server


@pytest.fixture
def client(server):
    with server.client() as c:
        yield c


def submit(client: Client, steps: int, **options):
    return client.style(PHOTO, preset="starry_night", size=64, steps=steps, **options)


def wait_running(job, timeout: float = JOB_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = job.status()
        if info.status == "running" and info.progress.step >= 1:
            return
        assert not info.finished, info
        time.sleep(0.05)
    raise AssertionError(f"job {job.id} never started running: {job.info}")


class CuttingProxy:
    """A TCP proxy in front of the server. Every connection is piped both ways; the first `cut` event-stream
    requests (GET .../events) have their connection closed once the answer carried a progress event; with
    refuse_events, every event-stream request is closed unanswered."""

    EVENTS_REQUEST = re.compile(rb"^GET \S*/events[ ?]", re.M)

    def __init__(self, upstream: str, cut: int = 0, refuse_events: bool = False):
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.cut, self.refuse_events = cut, refuse_events
        self.events_requests = self.cuts = self.refused = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            _close(sock)

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            self._sockets += [downstream, upstream]
            state = {"events": False, "cut": False}
            threading.Thread(target=self._requests, args=(downstream, upstream, state), daemon=True).start()
            threading.Thread(target=self._answers, args=(upstream, downstream, state), daemon=True).start()

    def _requests(self, src: socket.socket, dst: socket.socket, state: dict) -> None:
        try:
            while data := src.recv(65536):
                if self.EVENTS_REQUEST.search(data):
                    with self._lock:
                        self.events_requests += 1
                        if self.refuse_events:
                            self.refused += 1
                            break
                        state["events"] = True
                        state["cut"] = self.cuts < self.cut
                dst.sendall(data)
        except OSError:
            pass
        _close(src), _close(dst)

    def _answers(self, src: socket.socket, dst: socket.socket, state: dict) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                if state["events"] and state["cut"] and b"event: progress" in data:
                    with self._lock:
                        self.cuts += 1
                    break
        except OSError:
            pass
        _close(src), _close(dst)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class Scripted(BaseHTTPRequestHandler):
    """Answers GET /v1/models from a script of (status, headers, body) shared by the test; 200 once it runs out."""

    script: list = []
    seen: list = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).seen.append((time.monotonic(), self.path, dict(self.headers)))
        status, headers, body = type(self).script.pop(0) if type(self).script else (200, {}, {"models": []})
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@contextmanager
def scripted_server(script: list):
    Scripted.script, Scripted.seen = list(script), []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", Scripted.seen
    finally:
        httpd.shutdown()
        httpd.server_close()


# --------------------------------------------------------------------------------------------- predictions

def test_predict_digit_with_every_input_kind(client, tmp_path):
    pixels, labels = heldout("mnist-test", 6)
    path = tmp_path / "seven.png"
    path.write_bytes(png(pixels[0]))
    with open(path, "rb") as file:
        kinds = {"str path": str(path), "Path": path, "bytes": png(pixels[0]), "file object": file,
                 "PIL": Image.fromarray(pixels[0]), "NumPy HxW": pixels[0],
                 "NumPy HxWx1": pixels[0][:, :, None], "NumPy RGB": np.repeat(pixels[0][:, :, None], 3, axis=2)}
        answers = {kind: client.predict_digit(image) for kind, image in kinds.items()}
    first = answers["Path"]
    assert first.label == str(labels[0]) and first.model == "digits-cnn" and len(first.top) == 3
    for kind, answer in answers.items():  # the same pixels whatever the input: the same scores
        assert (answer.label, answer.score) == (first.label, first.score), kind

    mlp = client.predict_digit(pixels[0], top_k=1, model="digits-mlp")
    assert mlp.model == "digits-mlp" and len(mlp.top) == 1 and mlp.scores == {mlp.label: mlp.score}

    batch = client.predict_digit([path, png(pixels[1]), Image.fromarray(pixels[2]), *pixels[3:]], top_k=2)
    assert [p.label for p in batch] == [str(y) for y in labels]
    assert all(len(p.top) == 2 and p.model == "digits-cnn" for p in batch)
    assert client.predict_digit([]) == []


def test_predict_object_with_every_input_kind_and_batches(server, client, tmp_path):
    pixels, labels = heldout("cifar-test", 24)
    path = tmp_path / "photo.png"
    path.write_bytes(png(pixels[0]))
    kinds = {"path": path, "bytes": path.read_bytes(), "PIL": Image.fromarray(pixels[0]), "NumPy": pixels[0],
             "NumPy RGBA": np.dstack([pixels[0], np.full(pixels[0].shape[:2], 255, np.uint8)]),
             "JPEG bytes": _jpeg(pixels[0])}
    answers = {kind: client.predict_object(image, top_k=5) for kind, image in kinds.items()}
    for kind, answer in answers.items():
        assert answer.model == "objects-cnn" and len(answer.top) == 5 and answer.label in CIFAR10, kind
        if kind != "JPEG bytes":  # lossless: the very same scores
            assert (answer.label, answer.score) == (answers["path"].label, answers["path"].score), kind
    assert answers["path"].label == CIFAR10[labels[0]]

    with server.client(max_batch_items=10) as small_batches:  # 24 images: three requests, answers in order
        batch = small_batches.predict_object(list(pixels))
    assert len(batch) == 24
    assert sum(p.label == CIFAR10[y] for p, y in zip(batch, labels)) >= 18
    assert [p.label for p in batch[:8]] == [p.label for p in client.predict_object(tuple(pixels[:8]))]


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_sentiment_one_and_many(server, client):
    one = client.sentiment("a gripping, beautifully acted film")
    assert one.label == "positive" and one.model == "sentiment-lstm" and 0.5 < one.score <= 1
    texts = ["dull and far too long", "a delight from start to finish", "not worth the ticket",
             "one of the best films of the year", "boring"]
    many = client.sentiment(texts)
    assert [p.label for p in many] == ["negative", "positive", "negative", "positive", "negative"]
    with server.client(max_batch_items=2) as chunked:
        assert [(p.label, p.score) for p in chunked.sentiment(texts)] == [(p.label, p.score) for p in many]
    assert len(client.sentiment(texts[:1])) == 1  # a list of one is still a list


def test_models(client):
    models = {m.name: m for m in client.models()}
    assert set(models) == {"digits-cnn", "digits-mlp", "objects-cnn", "sentiment-lstm"}
    cnn = models["digits-cnn"]
    assert cnn.task == "digits" and cnn.default and cnn.loaded and cnn.classes == [str(d) for d in range(10)]
    assert cnn.accuracy > 0.99 and 0 < cnn.low_confidence_below < 1 and cnn.raw["sha256"]
    assert client.model("objects-cnn").classes == CIFAR10


def test_errors_carry_the_servers_words(client, tmp_path):
    with pytest.raises(NotFound) as unknown_model:
        client.predict_digit(heldout("mnist-test", 1)[0][0], model="digits-nope")
    assert unknown_model.value.status_code == 404 and "digits-nope" in unknown_model.value.detail
    with pytest.raises(ValidationError) as bad_top_k:
        client.sentiment("fine", top_k=99)
    assert bad_top_k.value.status_code == 422 and "top_k" in bad_top_k.value.detail
    assert bad_top_k.value.request_id and bad_top_k.value.errors
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    with pytest.raises(APIError) as refused:
        client.predict_object(not_an_image)
    assert refused.value.status_code in (400, 415) and refused.value.detail
    with pytest.raises(NotFound):
        client.job("no-such-job")
    with pytest.raises(InputError, match="cannot read image"):
        client.predict_digit(tmp_path / "missing.png")
    with pytest.raises(InputError, match="float64"):
        client.predict_digit(np.zeros((28, 28)))
    with pytest.raises(TransportError, match="cannot connect"):
        Client("http://127.0.0.1:9", retries=0).models()


def test_api_key_required_and_given(server, monkeypatch):
    with server.client(api_key="") as anonymous:
        with pytest.raises(AuthenticationError) as missing:
            anonymous.models()
    assert missing.value.status_code == 401 and "missing API key" in str(missing.value)
    with server.client(api_key="wrong") as wrong:
        with pytest.raises(AuthenticationError, match="invalid API key"):
            wrong.sentiment("fine")
    monkeypatch.setenv("MODEL_SERVER_URL", server.url)
    monkeypatch.setenv("MODEL_SERVER_API_KEY", API_KEY)
    with Client() as from_env:
        assert from_env.base_url == server.url and from_env.api_key == API_KEY
        assert from_env.sentiment("a delight").label == "positive"


def test_png_encoder_without_pil():
    rng = np.random.default_rng(0)
    cases = {"grey": rng.integers(0, 256, (5, 7), dtype=np.uint8),
             "grey+alpha": rng.integers(0, 256, (3, 4, 2), dtype=np.uint8),
             "RGB": rng.integers(0, 256, (6, 2, 3), dtype=np.uint8),
             "RGBA": rng.integers(0, 256, (2, 9, 4), dtype=np.uint8),
             "strided": rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)[::2, ::3]}
    for kind, array in cases.items():
        decoded = np.asarray(Image.open(io.BytesIO(encode_png(array))))
        assert np.array_equal(decoded, array), kind
    mask = np.eye(4, dtype=bool)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(mask)))), mask.astype(np.uint8) * 255)
    for bad in (np.zeros((4, 4), np.float32), np.zeros((4, 4, 5), np.uint8), np.zeros(4, np.uint8)):
        with pytest.raises(InputError):
            encode_png(bad)


# --------------------------------------------------------------------------------------------- style jobs

def test_style_job_waited_with_progress_and_saved(client, tmp_path):
    seen = []
    job = submit(client, steps=12)
    assert job.info.status in ("queued", "running") and job.info.params["steps"] == 12
    bar = io.StringIO()
    assert job.wait(progress=ProgressBar(bar, label="test"), timeout=JOB_TIMEOUT_S) is job
    assert job.info.status == "succeeded" and job.info.progress.step == 12
    assert job.report.stream_connections == 1 and job.report.reconnects == 0 and job.report.fallback_reason is None
    lines = bar.getvalue().splitlines()
    assert lines[-1].startswith("test [") and "100%" in lines[-1] and "succeeded" in lines[-1], lines
    assert any("step" in line and "100%" not in line for line in lines), lines

    out = job.save(tmp_path / "out.png")
    image = Image.open(out)
    assert image.format == "PNG" and max(image.size) == 64
    assert job.result() == out.read_bytes() and job.preview() == out.read_bytes()

    again = submit(client, steps=6)
    again.wait(progress=seen.append, timeout=JOB_TIMEOUT_S)  # a callable gets every state seen
    steps = [info.progress.step for info in seen]
    assert steps == sorted(steps) and seen[-1].status == "succeeded" and seen[-1].progress.step == 6
    assert client.job(again.id).status().succeeded
    assert again.id in [j.id for j in client.jobs(limit=5)]


def test_style_job_cancelled(client):
    job = submit(client, steps=2000)
    wait_running(job)
    info = job.cancel()
    assert info.status == "cancelled"
    with pytest.raises(JobCancelled) as cancelled:
        job.wait(timeout=10)
    assert cancelled.value.job.status == "cancelled"
    with pytest.raises(JobCancelled):
        job.result()
    assert job.wait(raise_on_failure=False).info.status == "cancelled"
    assert job.cancel().status == "cancelled"  # a finished job is left as it is
    job.delete()
    with pytest.raises(NotFound):
        job.status()


def test_style_options_presets_and_validation(client):
    options = client.style_options()
    assert options["limits"]["size"]["min"] == 64 and "starry_night" in options["presets"]
    assert {p.name for p in client.presets()} >= {"starry_night", "udnie"}
    with pytest.raises(ValidationError, match="unknown style preset"):
        client.style(PHOTO, preset="no_such_painting")
    with pytest.raises(ValidationError, match="size"):
        client.style(PHOTO, preset="udnie", size=8)
    with pytest.raises(InputError, match="needs a style"):
        client.style(PHOTO)
    blend = client.style(PHOTO, preset="udnie", style=Image.open(PHOTO).convert("L"), style_weights=[0.7, 0.3],
                         size=64, steps=2, preserve_color=True)
    assert blend.info.params["styles"] == [{"preset": "udnie"}, {"upload": "style0.png"}]
    assert blend.info.params["style_weights"] == [0.7, 0.3] and blend.info.params["preserve_color"] is True
    blend.wait(timeout=JOB_TIMEOUT_S)


def test_dropped_event_stream_is_reconnected(server, tmp_path):
    proxy = CuttingProxy(server.url, cut=1)
    try:
        with Client(proxy.url, API_KEY) as client:
            job = submit(client, steps=30)
            job.wait(timeout=JOB_TIMEOUT_S)
    finally:
        proxy.close()
    assert proxy.cuts == 1 and proxy.events_requests >= 2
    assert job.info.status == "succeeded" and job.info.progress.step == 30
    assert job.report.reconnects >= 1 and job.report.stream_connections >= 2
    assert job.report.fallback_reason is None and job.report.polls == 0


def test_async_client_reconnects_a_dropped_stream(server):
    proxy = CuttingProxy(server.url, cut=1)

    async def scenario():
        async with AsyncClient(proxy.url, API_KEY) as client:
            digit = await client.predict_digit(heldout("mnist-test", 1)[0][0])
            texts = await client.sentiment(["a delight", "dull and far too long"])
            models = await client.models()
            job = await client.style(PHOTO, preset="the_scream", size=64, steps=30)
            await job.wait(timeout=JOB_TIMEOUT_S)
            return digit, texts, models, job, await job.result()

    try:
        digit, texts, models, job, result = asyncio.run(scenario())
    finally:
        proxy.close()
    assert digit.label == "7" and [t.label for t in texts] == ["positive", "negative"] and len(models) == 4
    assert proxy.cuts == 1 and job.report.reconnects >= 1 and job.info.status == "succeeded"
    assert result.startswith(b"\x89PNG")


def test_polling_when_the_stream_is_refused_by_the_network(server):
    proxy = CuttingProxy(server.url, refuse_events=True)
    try:
        with Client(proxy.url, API_KEY) as client:
            job = submit(client, steps=40)
            job.wait(timeout=JOB_TIMEOUT_S, poll_interval=0.2)
    finally:
        proxy.close()
    assert job.info.status == "succeeded" and job.report.stream_connections == 0
    assert proxy.refused >= 4 and "kept failing" in job.report.fallback_reason and job.report.polls >= 1


def test_polling_when_the_job_has_no_stream_left(server):
    """STREAMS_PER_JOB=2: two streams held open by someone else, the (async) client's is refused with 429."""

    async def scenario():
        async with AsyncClient(server.url, API_KEY) as client, \
                httpx.AsyncClient(base_url=server.url, headers={"X-API-Key": API_KEY}, timeout=30) as other:
            job = await client.style(PHOTO, preset="starry_night", size=64, steps=60)
            async with other.stream("GET", f"/v1/style/jobs/{job.id}/events"), \
                    other.stream("GET", f"/v1/style/jobs/{job.id}/events"):
                await job.wait(timeout=JOB_TIMEOUT_S, poll_interval=0.2)
            return job

    job = asyncio.run(scenario())
    assert job.info.status == "succeeded" and job.report.stream_connections == 0 and job.report.polls >= 1
    assert "429" in job.report.fallback_reason and "STREAMS_PER_JOB" in job.report.fallback_reason


def test_full_queue_429_with_retry_after_is_retried(server):
    """MAX_QUEUED_JOBS=1: a job running and one queued, the next submit is answered 429 with Retry-After (when the
    running job will be done); the client waits that long and submits again, and the job is accepted."""
    with server.client() as client:
        running = submit(client, steps=80)
        wait_running(running)
        queued = submit(client, steps=2)
        assert queued.info.status == "queued"
        with server.client(retries=0) as impatient:
            with pytest.raises(RateLimited) as refused:
                submit(impatient, steps=2)
        assert refused.value.status_code == 429 and refused.value.retry_after >= 1
        assert "queue is full" in refused.value.detail

        retries = []
        with server.client(retries=RetryPolicy(attempts=20, max_wait_s=60), on_retry=retries.append) as patient:
            started = time.monotonic()
            accepted = submit(patient, steps=2)
            elapsed = time.monotonic() - started
            assert accepted.wait(timeout=JOB_TIMEOUT_S).info.status == "succeeded"
        assert retries and retries[0].status_code == 429 and retries[0].retry_after_s >= 1
        assert all(r.delay_s == r.retry_after_s for r in retries)
        assert elapsed >= retries[0].delay_s
        for job in (running, queued):
            assert job.wait(timeout=JOB_TIMEOUT_S).info.status == "succeeded"


def test_503_while_models_load_is_retried(server):
    """The fixture sent a predict as soon as the server listened: answered 503 with Retry-After while the models
    loaded, it was retried until they were, and answered."""
    if not server.startup_retries:
        pytest.skip("the models were loaded before the first request arrived")
    first = server.startup_retries[0]
    assert first.status_code == 503 and first.retry_after_s == 2 and first.delay_s == 2
    assert "loading" in first.detail and first.url.endswith("/v1/digits/predict")
    assert server.startup_label == "7"


# --------------------------------------------------------------------------------------------- retries (scripted)

def test_retry_after_seconds_and_http_date_are_honoured():
    soon = email.utils.formatdate(time.time() + 2, usegmt=True)
    script = [(429, {"Retry-After": "1"}, {"detail": "slow down"}),
              (503, {"Retry-After": soon}, {"detail": "restarting"}),
              (503, {}, {"detail": "still restarting"})]
    retries = []
    with scripted_server(script) as (url, seen):
        with Client(url, retries=RetryPolicy(attempts=4, backoff_s=0.2), on_retry=retries.append) as client:
            assert client.models() == []
    assert [r.status_code for r in retries] == [429, 503, 503]
    assert retries[0].delay_s == 1 and retries[0].detail == "slow down"
    assert 0 < retries[1].delay_s <= 2 and retries[1].retry_after_s == retries[1].delay_s
    assert retries[2].retry_after_s is None and retries[2].delay_s == 0.8  # no Retry-After: 0.2 s x 2^(3 - 1)
    times = [t for t, _, _ in seen]
    assert times[1] - times[0] >= 0.95 and len(seen) == 4


def test_retries_are_bounded_and_long_waits_refused():
    with scripted_server([(429, {"Retry-After": "0"}, {"detail": "busy"})] * 10) as (url, seen):
        with Client(url, retries=2) as client:
            with pytest.raises(RateLimited) as exhausted:
                client.models()
    assert len(seen) == 3 and exhausted.value.detail == "busy" and exhausted.value.retry_after == 0

    with scripted_server([(503, {"Retry-After": "120"}, {"detail": "down for maintenance"})]) as (url, seen):
        with Client(url, retries=RetryPolicy(max_wait_s=30)) as client:
            started = time.monotonic()
            with pytest.raises(ServiceUnavailable) as too_long:
                client.models()
    assert time.monotonic() - started < 5 and len(seen) == 1 and too_long.value.retry_after == 120

    with scripted_server([(502, {"Content-Type": "text/html"}, b"<html><h1>502 Bad Gateway</h1></html>")]) as (url, _):
        with Client(url, api_key="k") as client:
            with pytest.raises(ServerError) as proxy_error:
                client.models()
    assert proxy_error.value.status_code == 502 and "Bad Gateway" in proxy_error.value.detail
    assert str(proxy_error.value).startswith("502 Bad Gateway: ")


def test_api_key_is_sent_as_a_bearer_token():
    with scripted_server([]) as (url, seen):
        with Client(url, api_key="s3cret") as client:
            client.models()
    assert seen[0][2]["Authorization"] == "Bearer s3cret"
    assert seen[0][2]["User-Agent"].startswith("model-server-client/")


class ScriptedEvents(BaseHTTPRequestHandler):
    """A job that the server restarts under: its first event stream carries event ids, a `retry:` hint and ends
    with `event: shutdown`; the second must come back with Last-Event-ID and gets the end."""

    protocol_version = "HTTP/1.1"
    streams: list = []
    JOB = {"id": "J1", "status": "running", "queue_position": None, "progress": {"step": 1, "total": 3,
                                                                                "fraction": 0.3333}}

    def do_GET(self) -> None:  # noqa: N802
        if not self.path.endswith("/events"):
            return self._send(200, "application/json", json.dumps(self.JOB).encode())
        type(self).streams.append(dict(self.headers))
        if len(self.streams) == 1:
            body = (f"id: 1\nevent: status\ndata: {json.dumps(self.JOB)}\n\n"
                    'id: 2\nevent: progress\ndata: {"id":"J1","step":2,"total":3,"fraction":0.6667}\n\n'
                    'event: shutdown\nretry: 100\ndata: {"id":"J1","status":"running","detail":"restarting"}\n\n')
        else:
            done = {**self.JOB, "status": "succeeded", "progress": {"step": 3, "total": 3, "fraction": 1.0}}
            body = f": keep-alive\n\nid: 3\nevent: status\ndata: {json.dumps(done)}\n\n"
        self._send(200, "text/event-stream", body.encode())

    def _send(self, status: int, kind: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def test_reconnection_sends_last_event_id_and_honours_retry():
    ScriptedEvents.streams = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedEvents)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    seen = []
    try:
        with Client(f"http://127.0.0.1:{httpd.server_address[1]}") as client:
            job = client.job("J1")
            started = time.monotonic()
            job.wait(progress=seen.append, timeout=10)
            elapsed = time.monotonic() - started
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert [s.get("Last-Event-ID") for s in ScriptedEvents.streams] == [None, "2"]
    assert ScriptedEvents.streams[0]["Accept"] == "text/event-stream"
    assert job.info.status == "succeeded" and job.report.stream_connections == 2 and job.report.reconnects == 1
    assert job.report.last_event_id == "3" and [i.progress.step for i in seen] == [1, 1, 2, 3]
    assert 0.1 <= elapsed < 5  # the server's retry: 100 (ms) before reconnecting
