"""What the sync and the async clients share: settings, the requests each method sends, how answers are read, and
the logic of following a style job (event stream, reconnection, polling) apart from its I/O."""
from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import quote

import httpx

from model_server_client import __version__
from model_server_client.errors import (APIError, InputError, JobCancelled, JobFailed, NotFound, TransportError,
                                        WaitTimeout)
from model_server_client.images import ImageInput, describe, extension, image_bytes, media_type
from model_server_client.progress import ProgressArg, _Reporter
from model_server_client.retry import RetryPolicy, parse_retry_after
from model_server_client.datatypes import (CANCELLED, FAILED, JobInfo, ModelInfo, Prediction, Preset, RetryEvent,
                                       StyleEvent, WaitReport)

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "MODEL_SERVER_URL"
API_KEY_ENV = "MODEL_SERVER_API_KEY"
DEFAULT_TIMEOUT_S = 30.0
API = "/v1"
STYLE_JOBS = f"{API}/style/jobs"
# The server's default MAX_BATCH_ITEMS and MAX_REQUEST_CHARS: longer lists are sent in several requests.
MAX_BATCH_ITEMS = 64
MAX_REQUEST_CHARS = 20_000
# Following a job
STREAM_READ_TIMEOUT_S = 45.0  # the server sends a keep-alive comment every 15 s: 45 s of silence is a dead stream
RECONNECT_S = 0.5  # the first reconnection's delay when the server gave no `retry:` hint
MAX_STREAM_FAILURES = 3  # stream attempts in a row without an event before the job is followed by polling
STREAM_AGAIN_S = 10.0  # while polling, how long before the event stream is tried again
MAX_POLL_BACKOFF_S = 5.0  # polls back off to this while the server does not answer

OptionValue = Union[str, int, float, bool, Sequence[Union[int, float, str]], None]
ImageOrImages = Union[ImageInput, Sequence[ImageInput]]


def resolve_url(base_url: Optional[str]) -> str:
    url = base_url or os.environ.get(URL_ENV) or DEFAULT_URL
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def resolve_key(api_key: Optional[str]) -> Optional[str]:
    if api_key is None:
        api_key = os.environ.get(API_KEY_ENV) or None
    return api_key or None


def default_headers(api_key: Optional[str], extra: Optional[Dict[str, str]]) -> Dict[str, str]:
    headers = {"User-Agent": f"model-server-client/{__version__} httpx/{httpx.__version__}",
               "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    headers.update(extra or {})
    return headers


def as_timeout(timeout: Union[float, httpx.Timeout, None]) -> httpx.Timeout:
    if isinstance(timeout, httpx.Timeout):
        return timeout
    return httpx.Timeout(timeout)


def job_path(job_id: str, tail: str = "") -> str:
    return f"{STYLE_JOBS}/{quote(job_id, safe='')}{tail}"


# --------------------------------------------------------------------------------------------- requests

@dataclass
class Call:
    """One request, before it is sent (the same for the sync and the async client)."""

    method: str
    path: str
    params: Optional[Dict[str, Any]] = None
    json: Any = None
    data: Optional[Dict[str, Any]] = None
    files: Optional[List[Tuple[str, Tuple[str, bytes, str]]]] = None
    headers: Optional[Dict[str, str]] = None

    def kwargs(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for name in ("params", "json", "data", "files", "headers"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


def _query(top_k: Optional[int], model: Optional[str]) -> Optional[Dict[str, Any]]:
    params = {}
    if top_k is not None:
        params["top_k"] = int(top_k)
    if model is not None:
        params["model"] = model
    return params or None


def is_many(value: Any) -> bool:
    """A list or tuple of inputs (a NumPy array, bytes or a path is one input)."""
    return isinstance(value, (list, tuple))


def image_call(task: str, image: ImageInput, top_k: Optional[int], model: Optional[str]) -> Call:
    """One image as a multipart upload (no base64 overhead)."""
    data = image_bytes(image)
    kind = media_type(data)
    name = describe(image)
    if "." not in name:
        name += extension(kind)
    return Call("POST", f"{API}/{task}/predict", params=_query(top_k, model), files=[("file", (name, data, kind))])


def images_call(task: str, images: Sequence[ImageInput], top_k: Optional[int], model: Optional[str]) -> Call:
    """A batch as JSON {"images": [base64, ...]}: one request, one answer per image, in order."""
    encoded = [base64.b64encode(image_bytes(image)).decode("ascii") for image in images]
    return Call("POST", f"{API}/{task}/predict", params=_query(top_k, model), json={"images": encoded})


def text_call(texts: Union[str, Sequence[str]], top_k: Optional[int], model: Optional[str]) -> Call:
    body = {"text": texts} if isinstance(texts, str) else {"texts": list(texts)}
    return Call("POST", f"{API}/sentiment/predict", params=_query(top_k, model), json=body)


def batches(items: Sequence[Any], max_items: int, max_chars: Optional[int] = None) -> List[List[Any]]:
    """`items` in consecutive chunks of at most max_items (and, for texts, max_chars characters in all)."""
    chunks: List[List[Any]] = []
    current: List[Any] = []
    chars = 0
    for item in items:
        size = len(item) if max_chars is not None else 0
        if current and (len(current) >= max_items or (max_chars is not None and chars + size > max_chars)):
            chunks.append(current)
            current, chars = [], 0
        current.append(item)
        chars += size
    if current:
        chunks.append(current)
    return chunks


def form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(form_value(v) for v in value)
    return str(value)


def style_call(content: ImageInput, preset: Union[str, Sequence[str], None], style: Optional[ImageOrImages],
               options: Dict[str, OptionValue]) -> Call:
    """POST /v1/style/jobs as multipart: the content photo, the style uploads, the preset names and the options.
    Blend order (for style_weights): the presets as given, then the uploaded styles as given."""
    presets = [] if preset is None else ([preset] if isinstance(preset, str) else list(preset))
    styles = [] if style is None else (list(style) if is_many(style) else [style])
    if not presets and not styles:
        raise InputError("a style job needs a style: give preset='starry_night' (Client.presets() lists them) "
                         "and/or style=<an image>")
    content_data = image_bytes(content)
    files = [("content", (_upload_name(content, content_data, "content"), content_data, media_type(content_data)))]
    for index, image in enumerate(styles):
        data = image_bytes(image)
        files.append(("style", (_upload_name(image, data, f"style{index}"), data, media_type(data))))
    form: Dict[str, Any] = {}
    if presets:
        form["style_preset"] = presets
    for name, value in options.items():
        if value is not None:
            form[name] = form_value(value)
    return Call("POST", STYLE_JOBS, data=form, files=files)


def _upload_name(image: ImageInput, data: bytes, fallback: str) -> str:
    name = describe(image)
    if name in ("image", "image.png"):
        name = fallback + extension(media_type(data))
    return name


# --------------------------------------------------------------------------------------------- answers

def prediction(body: dict) -> Prediction:
    return Prediction.from_json(body, body.get("model", ""))


def predictions(body: dict) -> List[Prediction]:
    return [Prediction.from_json(item, body.get("model", "")) for item in body["results"]]


def model_list(body: dict) -> List[ModelInfo]:
    return [ModelInfo.from_json(item) for item in body["models"]]


def preset_list(body: dict) -> List[Preset]:
    return [Preset.from_json(item) for item in body["presets"]]


def transport_error(exc: httpx.RequestError, base_url: str) -> TransportError:
    try:
        request: Optional[httpx.Request] = exc.request
    except RuntimeError:  # raised before a request was built
        request = None
    where = f"{request.method} {request.url}" if request is not None else base_url
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError):
        message = f"cannot connect to the server at {base_url}: {reason}"
    elif isinstance(exc, httpx.TimeoutException):
        message = f"the server did not answer in time ({type(exc).__name__}) on {where}"
    else:
        message = f"the connection to {base_url} failed on {where}: {reason}"
    return TransportError(message, str(request.url) if request is not None else base_url)


def retry_after_of(response: httpx.Response) -> Optional[float]:
    return parse_retry_after(response.headers.get("retry-after"))


def retry_event(call: Call, response: httpx.Response, attempt: int, delay: float,
                retry_after: Optional[float], detail: str) -> RetryEvent:
    return RetryEvent(method=call.method, url=str(response.request.url), status_code=response.status_code,
                      attempt=attempt, delay_s=delay, retry_after_s=retry_after, detail=detail)


class Settings:
    """The parts of a client the sync and async classes share."""

    def __init__(self, base_url: Optional[str], api_key: Optional[str], retries: Union[int, RetryPolicy, None],
                 on_retry: Optional[Callable[[RetryEvent], Any]], max_batch_items: int, max_request_chars: int):
        self.base_url = resolve_url(base_url)
        self.api_key = resolve_key(api_key)
        self.retry = RetryPolicy.of(retries)
        self.on_retry = on_retry
        self.max_batch_items = max_batch_items
        self.max_request_chars = max_request_chars


def raise_for_outcome(info: JobInfo) -> None:
    if info.status == FAILED:
        raise JobFailed(f"style job {info.id} failed: {info.error or 'no reason given'}", info)
    if info.status == CANCELLED:
        raise JobCancelled(f"style job {info.id} was cancelled", info)


# --------------------------------------------------------------------------------------------- following a job

FINISHED, SHUTDOWN, GOING = "finished", "shutdown", "going"


class Follow:
    """The state of one wait(): which way the job is followed (event stream or polling), the reconnection
    delays, the deadline. The sync and async wait loops do the I/O and ask this what to do next."""

    def __init__(self, info: JobInfo, progress: ProgressArg, timeout: Optional[float], poll_interval: float,
                 label: str):
        self.info = info
        self.reporter = _Reporter(progress, label)
        self.report = WaitReport()
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.poll_interval = poll_interval
        self.mode = "stream"
        self.failures = 0  # stream attempts in a row that brought no event
        self.retry_s = RECONNECT_S  # the server's `retry:` hint once it sent one
        self.stream_again_at: Optional[float] = None
        self.poll_errors = 0

    # ------------------------------------------------------------------ time

    def remaining(self) -> Optional[float]:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check_deadline(self) -> None:
        remaining = self.remaining()
        if remaining is not None and remaining <= 0:
            p = self.info.progress
            raise WaitTimeout(f"style job {self.info.id} is still {self.info.status} (step {p.step} of {p.total}) "
                              "after the time given to wait()", self.info)

    def sleep_s(self, delay: float) -> float:
        remaining = self.remaining()
        return max(0.0, delay if remaining is None else min(delay, remaining))

    # ------------------------------------------------------------------ the event stream

    def stream_headers(self) -> Dict[str, str]:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.report.last_event_id:
            headers["Last-Event-ID"] = self.report.last_event_id
        return headers

    def stream_timeout(self, base: httpx.Timeout) -> httpx.Timeout:
        read = STREAM_READ_TIMEOUT_S
        remaining = self.remaining()
        if remaining is not None:
            read = max(0.05, min(read, remaining + 0.05))
        return httpx.Timeout(base.connect, read=read, write=base.write, pool=base.pool)

    def connected(self) -> None:
        self.report.stream_connections += 1
        if self.report.stream_connections > 1:
            self.reporter.note("event stream reconnected")

    def refused(self, error: APIError) -> None:
        """The events route answered an error: the job's own errors are raised, the others mean polling."""
        if error.status_code in (401, 403, 404):
            raise error
        self.fall_back(f"the event stream was refused ({error})", error.retry_after)

    def not_a_stream(self, content_type: str) -> None:
        self.fall_back(f"the events URL answered {content_type or 'no content type'}, not an event stream")

    def event(self, event: StyleEvent, retry_ms: Optional[int]) -> str:
        self.failures = 0
        self.report.events += 1
        if event.id is not None:
            self.report.last_event_id = event.id
        if retry_ms is not None:
            self.retry_s = retry_ms / 1000
        if event.event == "status":
            if event.data.get("status") == "deleted":
                raise NotFound(404, f"style job {self.info.id} was deleted while it was followed")
            if "progress" in event.data:
                self.info = JobInfo.from_json(event.data)
        elif event.event == "progress":
            self.info = self.info.with_progress(event.data)
        elif event.event == "shutdown":
            return SHUTDOWN
        else:
            return GOING
        self.reporter.update(self.info)
        return FINISHED if self.info.finished else GOING

    def lost(self, why: str) -> float:
        """The stream ended or broke before the job did; the delay before the next attempt."""
        self.failures += 1
        self.report.reconnects += 1
        if self.failures > MAX_STREAM_FAILURES:
            self.fall_back(f"the event stream kept failing ({why})")
            return 0.0
        self.reporter.note(f"event stream lost ({why}); reconnecting")
        return self.retry_s * self.failures

    def fall_back(self, reason: str, retry_after: Optional[float] = None) -> None:
        self.mode = "poll"
        if self.report.fallback_reason is None:
            self.report.fallback_reason = reason
        self.reporter.note(f"{reason}; following the job by polling")
        self.stream_again_at = time.monotonic() + max(retry_after or 0.0, STREAM_AGAIN_S)

    # ------------------------------------------------------------------ polling

    def polled(self, info: JobInfo) -> float:
        self.report.polls += 1
        self.info = info
        if self.poll_errors:
            self.poll_errors = 0
            self.reporter.note("the server answers again")
        self.reporter.update(info)
        if not info.finished and self.stream_again_at is not None and time.monotonic() >= self.stream_again_at:
            self.mode, self.failures = "stream", 0
        return self.poll_interval

    def poll_failed(self, error: Exception) -> float:
        self.poll_errors += 1
        if self.poll_errors == 1:
            self.reporter.note(f"{error}; trying again by itself")
        return min(MAX_POLL_BACKOFF_S, self.poll_interval * 2 ** self.poll_errors)

    def close(self) -> None:
        self.reporter.close()


def describe_drop(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
