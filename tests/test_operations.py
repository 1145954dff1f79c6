"""Operations: /metrics, request ids and access logs, API keys, CORS and the predict timeout."""
import io
import json
import logging
import re
import time

import pytest
from fastapi.testclient import TestClient

from prometheus_client import CollectorRegistry

from app.core.observability import JsonFormatter
from app.style.metrics import StyleMetrics
from app.main import create_app
from tests.conftest import make_settings, wait_until_ready
from tests.test_api import digit_image, encode

KEY = "s3cret-key_1"


def upload_digit(client: TestClient, **kwargs):
    return client.post("/v1/digits/predict", files={"file": ("d.png", encode(digit_image(7)), "image/png")},
                       **kwargs)


def sample(text: str, name: str, **labels) -> float | None:
    """The value of one Prometheus sample (labels in any order), or None."""
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(2))
    return None


# ------------------------------------------------------------------------------------------------ metrics

def test_metrics_exposes_requests_latency_batches_load_and_style_queue(client):
    assert upload_digit(client).status_code == 200
    assert client.post("/v1/sentiment/predict", json={"texts": ["good movie", "bad film"]}).status_code == 200
    assert client.get("/v1/models/nope").status_code == 404
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert sample(text, "http_requests_total", route="/v1/digits/predict", method="POST", status="200") >= 1
    assert sample(text, "http_requests_total", route="/v1/models/{name}", method="GET", status="404") >= 1
    assert sample(text, "predict_latency_seconds_count", model="digits-cnn") >= 1
    assert sample(text, "predict_latency_seconds_count", model="sentiment-lstm") >= 1
    assert sample(text, "model_batch_size_count", model="sentiment-lstm") >= 1
    assert sample(text, "model_batch_size_sum", model="digits-cnn") >= 1
    assert sample(text, "model_batch_size_bucket", model="digits-cnn", le="+Inf") >= 1
    for model in ("digits-cnn", "digits-mlp", "objects-resnet", "sentiment-lstm"):
        assert sample(text, "model_load_seconds", model=model) > 0
    assert sample(text, "style_queue_depth") == 0
    assert sample(text, "style_jobs_running") == 0
    assert "gpu_memory_allocated_bytes" not in text  # CPU only
    # Unmatched paths share one label value: no cardinality explosion from scanners.
    client.get("/no/such/path/123")
    assert sample(client.get("/metrics").text, "http_requests_total", route="unmatched", status="404") >= 1


def test_each_app_has_its_own_metrics_registry(tiny_weights_dir, tmp_path):
    first = TestClient(create_app(make_settings(tiny_weights_dir, tmp_path / "a")))
    second = TestClient(create_app(make_settings(tiny_weights_dir, tmp_path / "b")))
    first.get("/healthz")
    first.get("/healthz")
    second.get("/healthz")
    count = {"route": "/healthz", "method": "GET", "status": "200"}
    assert sample(first.get("/metrics").text, "http_requests_total", **count) == 2
    assert sample(second.get("/metrics").text, "http_requests_total", **count) == 1


def test_style_job_outcomes_and_durations_are_counted_once():
    class FakeStore:
        def __init__(self):
            self.rows = []

        def finished_since(self, since):
            return [row for row in self.rows if row[3] > since]

    registry = CollectorRegistry()
    metrics, store, now = StyleMetrics(registry, lambda: None), FakeStore(), time.time()
    store.rows = [("a", "succeeded", now - 3, now + 0.5), ("b", "failed", now - 1, now + 0.6),
                  ("c", "cancelled", None, now + 0.7), ("old", "succeeded", now - 99, now - 90)]
    metrics.sync_jobs(store)
    metrics.sync_jobs(store)  # a second scrape counts nothing twice
    from prometheus_client import generate_latest
    text = generate_latest(registry).decode()
    assert sample(text, "style_jobs_finished_total", status="succeeded") == 1
    assert sample(text, "style_jobs_finished_total", status="failed") == 1
    assert sample(text, "style_jobs_finished_total", status="cancelled") == 1
    assert sample(text, "style_job_duration_seconds_count") == 2  # the cancelled one never started
    assert sample(text, "style_job_duration_seconds_sum") == pytest.approx(3.5 + 1.6)


# ------------------------------------------------------------------------------------------ request ids, logs

def test_request_id_is_echoed_when_valid_and_generated_otherwise(client):
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123.XYZ_9"}).headers["x-request-id"] == \
        "abc-123.XYZ_9"
    for bad in ("has spaces", "x" * 65, "quote\"s", ""):
        generated = client.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated), bad
    first, second = (client.get("/healthz").headers["x-request-id"] for _ in range(2))
    assert re.fullmatch(r"[0-9a-f]{32}", first) and first != second
    # Error responses carry it too.
    assert client.get("/v1/models/nope", headers={"X-Request-ID": "err-1"}).headers["x-request-id"] == "err-1"


def test_access_log_lines_are_json_with_the_request_id_and_no_body(client, caplog):
    secret = "a very private sentence about a film"
    with caplog.at_level(logging.INFO, logger="app.access"):
        response = client.post("/v1/sentiment/predict", json={"text": secret}, headers={"X-Request-ID": "req-42"})
    assert response.status_code == 200
    lines = [JsonFormatter().format(record) for record in caplog.records]
    access = [json.loads(line) for line in lines if json.loads(line)["logger"] == "app.access"]
    assert len(access) == 1
    entry = access[0]
    assert entry["request_id"] == "req-42"
    assert entry["method"] == "POST" and entry["path"] == "/v1/sentiment/predict" and entry["status"] == 200
    assert isinstance(entry["duration_ms"], float) and entry["duration_ms"] >= 0
    assert entry["level"] == "info" and "time" in entry
    assert all(secret not in line and "private" not in line for line in lines)


def test_log_format_json_configures_a_json_handler(tiny_weights_dir, tmp_path, monkeypatch):
    from app.core import observability

    app_logger = logging.getLogger("app")
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as under plain uvicorn
    monkeypatch.setattr(app_logger, "handlers", [])
    try:
        app = create_app(make_settings(tiny_weights_dir, tmp_path, log_format="json"))
        handlers = [h for h in app_logger.handlers if getattr(h, "_app_handler", False)]
        assert len(handlers) == 1 and isinstance(handlers[0].formatter, observability.JsonFormatter)
        stream = io.StringIO()
        handlers[0].setStream(stream)
        TestClient(app).post("/v1/sentiment/predict?top_k=2", content=b"secret body",
                             headers={"X-Request-ID": "json-1", "Content-Type": "text/plain"})
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        access = [line for line in lines if line["logger"] == "app.access"]
        assert access == [{**access[0], "request_id": "json-1", "method": "POST", "status": 503,
                           "path": "/v1/sentiment/predict"}]  # 503: lifespan not run
        assert "secret" not in stream.getvalue()
        create_app(make_settings(tiny_weights_dir, tmp_path, log_format="text"))  # reconfigured, not added
        assert len(app_logger.handlers) == 1
        assert not isinstance(app_logger.handlers[0].formatter, observability.JsonFormatter)
    finally:
        app_logger.setLevel(logging.NOTSET)


def test_unexpected_errors_are_logged_with_the_request_id(tiny_weights_dir, tmp_path, caplog):
    app = create_app(make_settings(tiny_weights_dir, tmp_path))

    @app.get("/boom")
    async def boom():
        raise RuntimeError("boom")

    with caplog.at_level(logging.INFO):
        response = TestClient(app, raise_server_exceptions=False).get("/boom", headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500 and response.headers["x-request-id"] == "boom-1"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors and all(getattr(r, "request_id", None) == "boom-1" for r in errors)
    access = [r for r in caplog.records if r.name == "app.access"]
    assert access and access[0].status == 500 and access[0].request_id == "boom-1"


# ------------------------------------------------------------------------------------------------ auth, CORS

def test_auth_is_off_by_default(client):
    assert client.get("/v1/models").status_code == 200


@pytest.fixture(scope="module")
def secured_client(tiny_weights_dir, tmp_path_factory):
    settings = make_settings(tiny_weights_dir, tmp_path_factory.mktemp("secured"), api_keys=f" {KEY} , other-key",
                             cors_origins="https://ui.example.com", style_jobs_enabled=False)
    with TestClient(create_app(settings)) as test_client:
        wait_until_ready(test_client)
        yield test_client


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"},
                                     {"Authorization": f"Basic {KEY}"}, {"Authorization": "Bearer"},
                                     {"X-API-Key": KEY + "x"}])
def test_v1_needs_a_valid_key(secured_client, headers):
    for response in (secured_client.get("/v1/models", headers=headers), upload_digit(secured_client, headers=headers)):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.headers["content-type"] == "application/json"
        assert "API key" in response.json()["detail"]
        assert response.headers["x-request-id"]
    text = secured_client.get("/metrics").text
    assert sample(text, "http_requests_total", route="/v1/models", status="401") >= 1
    assert sample(text, "http_requests_total", route="/v1/digits/predict", status="401") >= 1


def test_a_valid_key_is_accepted_as_bearer_or_x_api_key(secured_client):
    for headers in ({"Authorization": f"Bearer {KEY}"}, {"authorization": f"bearer {KEY}"},
                    {"X-API-Key": KEY}, {"X-API-Key": "other-key"}):
        assert secured_client.get("/v1/models", headers=headers).status_code == 200
        assert upload_digit(secured_client, headers=headers).status_code == 200


def test_unauthenticated_uploads_are_refused_before_the_body_is_read(secured_client):
    # Auth runs before the body-size check: a huge declared body is refused with 401, not read or 413'd.
    response = secured_client.post("/v1/digits/predict", content=b"x" * 100,
                                   headers={"Content-Length": str(10**9), "Content-Type": "image/png"})
    assert response.status_code == 401


def test_probes_front_end_docs_and_metrics_stay_open(secured_client):
    for path in ("/healthz", "/readyz", "/", "/web/app.css", "/docs", "/openapi.json", "/metrics"):
        assert secured_client.get(path).status_code == 200, path


def test_cors_preflight_is_allowed_for_configured_origins_only(secured_client):
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type,x-api-key"}
    allowed = secured_client.options("/v1/digits/predict", headers={"Origin": "https://ui.example.com", **preflight})
    assert allowed.status_code == 200  # no key needed for a preflight
    assert allowed.headers["access-control-allow-origin"] == "https://ui.example.com"
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    refused = secured_client.options("/v1/digits/predict", headers={"Origin": "https://evil.example", **preflight})
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
    simple = secured_client.get("/v1/models", headers={"Origin": "https://ui.example.com", "X-API-Key": KEY})
    assert simple.headers["access-control-allow-origin"] == "https://ui.example.com"
    exposed = simple.headers["access-control-expose-headers"].lower()
    assert "x-request-id" in exposed and "location" in exposed


def test_no_cors_headers_by_default(client):
    response = client.get("/v1/models", headers={"Origin": "https://ui.example.com"})
    assert "access-control-allow-origin" not in response.headers


# ------------------------------------------------------------------------------------------------ timeout

def test_slow_predictions_time_out_with_504_and_are_dropped(tiny_weights_dir, tmp_path):
    settings = make_settings(tiny_weights_dir, tmp_path, request_timeout_s=0.2, style_jobs_enabled=False)
    app = create_app(settings)
    with TestClient(app) as client:
        wait_until_ready(client)
        batcher = app.state.services.registry.for_task("sentiment").batcher
        real_predict = batcher.predict_fn
        calls = []

        def slow_predict(items):
            calls.append(len(items))
            time.sleep(0.6)  # testing the timeout mechanism, not the model
            return real_predict(items)

        batcher.predict_fn = slow_predict
        started = time.monotonic()
        response = client.post("/v1/sentiment/predict", json={"text": "good movie"})
        assert response.status_code == 504
        assert "REQUEST_TIMEOUT_S" in response.json()["detail"]
        assert time.monotonic() - started < 0.55
        # An input still queued when its request timed out is skipped, never run.
        response = client.post("/v1/sentiment/predict", json={"text": "queued behind the slow one"})
        assert response.status_code == 504
        time.sleep(0.8)
        batcher.predict_fn = real_predict
        settings.request_timeout_s = 30
        assert client.post("/v1/sentiment/predict", json={"text": "good movie"}).status_code == 200
        assert calls == [1]
        assert sample(client.get("/metrics").text, "http_requests_total", route="/v1/sentiment/predict",
                      status="504") == 2
