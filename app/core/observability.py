"""Operations: request ids, access logs (text or JSON) and Prometheus metrics.

* RequestContextMiddleware (pure ASGI, outermost of ours): takes a valid incoming X-Request-ID or makes one
  (uuid4 hex), returns it as X-Request-ID, counts the request by route template/method/status and writes one
  access log line (method, path, status, duration_ms, request_id). Bodies are never logged.
* Metrics: one CollectorRegistry per app (create_app), so several apps in one process do not clash. Counters
  and histograms are observed as requests happen; model load times, batch sizes (from the batchers' own
  stats) and GPU memory are computed at scrape time. Style jobs register their own metrics (app/style/metrics.py).
"""
from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from app.core.config import Settings

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
request_id_var: ContextVar[str] = ContextVar("request_id", default="-")

access_logger = logging.getLogger("app.access")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def valid_request_id(value: str | None) -> str | None:
    return value if value and _REQUEST_ID_RE.match(value) else None


def new_request_id() -> str:
    return uuid.uuid4().hex


# ---------------------------------------------------------------------------------------------- metrics

class Metrics:
    """The app's Prometheus registry and the metrics observed while serving."""

    def __init__(self, models: Callable[[], Any]):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("http_requests", "HTTP requests by route template, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.caller_requests = Counter("http_requests_by_caller", "HTTP requests by API key name (API_KEYS "
                                       "set) and status class", ["caller", "status_class"], registry=self.registry)
        self.predict_latency = Histogram("predict_latency_seconds", "Predict request latency by model",
                                         ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_ScrapeTimeCollector(models))


class _ScrapeTimeCollector:
    """Values read from the model registry (None before startup) when /metrics is scraped."""

    def __init__(self, models: Callable[[], Any]):
        self.models = models

    def describe(self):
        return []

    def collect(self):
        registry = self.models()
        if registry is not None:
            yield from _model_metrics(registry)


def _model_metrics(registry: Any):
    load = GaugeMetricFamily("model_load_seconds", "Seconds the model took to load (set up and start)",
                             labels=["model"])
    for name, seconds in getattr(registry, "load_seconds", {}).items():
        load.add_metric([name], seconds)
    yield load
    sizes = HistogramMetricFamily("model_batch_size", "Inputs per forward pass, by model", labels=["model"])
    for name, stats in registry.batcher_stats().items():
        counts = dict(stats.batch_sizes)
        buckets = [(str(float(bound)), sum(n for size, n in counts.items() if size <= bound))
                   for bound in BATCH_SIZE_BUCKETS]
        buckets.append(("+Inf", sum(counts.values())))
        sizes.add_metric([name], buckets, float(sum(size * n for size, n in counts.items())))
    yield sizes
    device = registry.device
    if device.type == "cuda":
        import torch

        gpu = GaugeMetricFamily("gpu_memory_allocated_bytes", "GPU memory held by tensors (torch)",
                                labels=["device"])
        gpu.add_metric([str(device)], float(torch.cuda.memory_allocated(device)))
        yield gpu


# ---------------------------------------------------------------------------------------------- middleware

class RequestContextMiddleware:
    """Request id, access log and request counter; sees every response our other middleware produce."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = valid_request_id(value.decode("latin-1"))
                break
        request_id = incoming or new_request_id()
        request_id_var.set(request_id)  # left set on error so the 500 handler can log and return it
        scope["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._record(scope, status, time.perf_counter() - started, request_id)

    def _record(self, scope: Scope, status: int, seconds: float, request_id: str) -> None:
        template = _route_template(scope)
        method = scope["method"]
        self.metrics.requests.labels(template, method, str(status)).inc()
        caller = getattr(scope.get("user"), "name", None)  # an API key's name (app.core.security), never the key
        if caller is not None:
            self.metrics.caller_requests.labels(caller, f"{status // 100}xx").inc()
        duration_ms = round(seconds * 1000, 2)
        shown = f" caller={caller}" if caller else ""
        access_logger.info("%s %s %d %.2f ms%s", method, scope["path"], status, duration_ms, shown,
                           extra={"request_id": request_id, "method": method, "path": scope["path"],
                                  "status": status, "duration_ms": duration_ms, "caller": caller})


def _route_template(scope: Scope) -> str:
    """The matched route's path template; for requests answered before routing (401, 413) it is looked up.
    Paths matching no route share one label value, so scanners cannot blow up the metric's cardinality."""
    route = scope.get("route")
    if route is None and scope.get("app") is not None:
        try:
            route = _lookup_route(getattr(scope["app"], "routes", []), scope)
        except Exception:  # a lookup for a label must never fail the request
            route = None
    return getattr(route, "path", None) or "unmatched"


def _lookup_route(routes: list, scope: Scope) -> Any:
    from starlette.routing import Match

    partial = None
    for candidate in routes:
        included = getattr(candidate, "original_router", None)  # FastAPI's wrapper of an included router
        if included is not None:
            found = _lookup_route(included.routes, scope)
            if found is not None:
                return found
            continue
        match, _ = candidate.matches(scope)
        if match is Match.FULL:
            return candidate
        if match is Match.PARTIAL and partial is None:
            partial = candidate
    return partial


# ---------------------------------------------------------------------------------------------- logging

_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime",
                                                                                 "color_message"}


class RequestIdFilter(logging.Filter):
    """Gives every record a request_id: the one passed in `extra`, else the current request's, else '-'."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage(),
            "request_id": getattr(record, "request_id", request_id_var.get()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in data:
                data[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


TEXT_FORMAT = "%(levelname)s:     %(name)s: %(message)s [request_id=%(request_id)s]"


def make_formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format.lower() == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(settings: Settings) -> None:
    """Give the app's loggers a handler when nobody configured logging (plain uvicorn); LOG_FORMAT picks
    its format. A handler installed by an earlier create_app() is reconfigured, not duplicated."""
    app_logger = logging.getLogger("app")
    app_logger.setLevel(settings.log_level.upper())
    if settings.log_format.lower() == "json":
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # uvicorn's own lines: JSON too
            for handler in logging.getLogger(name).handlers:
                handler.setFormatter(JsonFormatter())
    ours = [h for h in app_logger.handlers if getattr(h, "_app_handler", False)]
    if ours:
        ours[0].setFormatter(make_formatter(settings.log_format))
        return
    if not logging.getLogger().handlers and not app_logger.handlers:
        handler = logging.StreamHandler()
        handler._app_handler = True  # type: ignore[attr-defined]
        handler.addFilter(RequestIdFilter())
        handler.setFormatter(make_formatter(settings.log_format))
        app_logger.addHandler(handler)
