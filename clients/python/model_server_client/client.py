"""The synchronous client and its style-job handle."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union, overload
from urllib.parse import quote

import httpx

from model_server_client import _base
from model_server_client._base import FINISHED, SHUTDOWN, Call, Follow, ImageOrImages, OptionValue
from model_server_client.errors import ServiceUnavailable, TransportError, WaitTimeout, api_error
from model_server_client.images import ImageInput
from model_server_client.progress import ProgressArg, SSEParser
from model_server_client.retry import RetryPolicy
from model_server_client.datatypes import JobInfo, ModelInfo, Prediction, Preset, RetryEvent, StyleEvent, WaitReport


class Client:
    """A client of the model server's /v1 API.

    base_url: the server (default $MODEL_SERVER_URL, else http://127.0.0.1:8000); api_key: sent as
    `Authorization: Bearer <key>` (default $MODEL_SERVER_API_KEY); timeout: seconds per request (or an
    httpx.Timeout); retries: retries of 429/503 answers (an int, or a RetryPolicy; default RetryPolicy()); on_retry:
    called with a RetryEvent before each retry. Use it as a context manager, or call close().
    """

    def __init__(self, base_url: Optional[str] = None, api_key: Optional[str] = None, *,
                 timeout: Union[float, httpx.Timeout, None] = _base.DEFAULT_TIMEOUT_S,
                 retries: Union[int, RetryPolicy, None] = None,
                 on_retry: Optional[Callable[[RetryEvent], Any]] = None,
                 headers: Optional[Dict[str, str]] = None, verify: Any = True,
                 transport: Optional[httpx.BaseTransport] = None,
                 max_batch_items: int = _base.MAX_BATCH_ITEMS, max_request_chars: int = _base.MAX_REQUEST_CHARS):
        self._settings = _base.Settings(base_url, api_key, retries, on_retry, max_batch_items, max_request_chars)
        self.timeout = _base.as_timeout(timeout)
        self._http = httpx.Client(base_url=self.base_url, headers=_base.default_headers(self.api_key, headers),
                                  timeout=self.timeout, verify=verify, transport=transport)

    # ------------------------------------------------------------------ settings and lifetime

    @property
    def base_url(self) -> str:
        return self._settings.base_url

    @property
    def api_key(self) -> Optional[str]:
        return self._settings.api_key

    @property
    def retry(self) -> RetryPolicy:
        return self._settings.retry

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    # ------------------------------------------------------------------ sending

    def _send(self, call: Call) -> httpx.Response:
        """Send `call`, retrying 429 and 503 answers as the retry policy says; an error answer is raised as its
        APIError, a failed connection as TransportError."""
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.request(call.method, call.path, **call.kwargs())
            except httpx.RequestError as exc:
                raise _base.transport_error(exc, self.base_url) from None
            if response.status_code < 400:
                return response
            retry_after = _base.retry_after_of(response)
            delay = self.retry.delay(response.status_code, attempt, retry_after)
            error = api_error(response, retry_after)
            if delay is None:
                raise error
            if self._settings.on_retry is not None:
                self._settings.on_retry(_base.retry_event(call, response, attempt, delay, retry_after, error.detail))
            time.sleep(delay)

    def _json(self, call: Call) -> Any:
        return self._send(call).json()

    # ------------------------------------------------------------------ health and models

    def health(self) -> dict:
        """GET /healthz (liveness)."""
        return self._json(Call("GET", "/healthz"))

    def readiness(self) -> dict:
        """GET /readyz as it is, 503 (loading) included: {"status": "ready" | "loading" | "failed", ...}."""
        try:
            response = self._http.get("/readyz")
        except httpx.RequestError as exc:
            raise _base.transport_error(exc, self.base_url) from None
        if response.status_code not in (200, 503):
            raise api_error(response)
        return response.json()

    def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.2) -> dict:
        """Poll /readyz until the models are loaded (a server still starting, not yet listening, is waited for)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                state = self.readiness()
                if state.get("status") == "ready":
                    return state
                if state.get("status") == "failed":
                    raise ServiceUnavailable(503, f"model loading failed: {state.get('error')}")
            except TransportError:
                if time.monotonic() >= deadline:
                    raise
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"the server at {self.base_url} is not ready after {timeout:g} s")
            time.sleep(interval)

    def models(self) -> List[ModelInfo]:
        """Every model served (GET /v1/models)."""
        return _base.model_list(self._json(Call("GET", f"{_base.API}/models")))

    def model(self, name: str) -> ModelInfo:
        return ModelInfo.from_json(self._json(Call("GET", f"{_base.API}/models/{quote(name, safe='')}")))

    # ------------------------------------------------------------------ classifiers

    @overload
    def predict_digit(self, image: ImageInput, *, top_k: Optional[int] = ..., model: Optional[str] = ...
                      ) -> Prediction: ...

    @overload
    def predict_digit(self, image: Sequence[ImageInput], *, top_k: Optional[int] = ..., model: Optional[str] = ...
                      ) -> List[Prediction]: ...

    def predict_digit(self, image, *, top_k=None, model=None):
        """A handwritten digit: one image (path, bytes, file object, PIL image, uint8 NumPy array) -> Prediction;
        a list or tuple of them -> a list of Predictions, in order (sent in batches of max_batch_items)."""
        return self._predict_images("digits", image, top_k, model)

    @overload
    def predict_object(self, image: ImageInput, *, top_k: Optional[int] = ..., model: Optional[str] = ...
                       ) -> Prediction: ...

    @overload
    def predict_object(self, image: Sequence[ImageInput], *, top_k: Optional[int] = ..., model: Optional[str] = ...
                       ) -> List[Prediction]: ...

    def predict_object(self, image, *, top_k=None, model=None):
        """A photo's CIFAR-10 class; one image or a list, as predict_digit."""
        return self._predict_images("objects", image, top_k, model)

    def _predict_images(self, task: str, image: ImageOrImages, top_k: Optional[int], model: Optional[str]):
        if not _base.is_many(image):
            return _base.prediction(self._json(_base.image_call(task, image, top_k, model)))
        results: List[Prediction] = []
        for chunk in _base.batches(list(image), self._settings.max_batch_items):
            results += _base.predictions(self._json(_base.images_call(task, chunk, top_k, model)))
        return results

    @overload
    def sentiment(self, text: str, *, top_k: Optional[int] = ..., model: Optional[str] = ...) -> Prediction: ...

    @overload
    def sentiment(self, text: Sequence[str], *, top_k: Optional[int] = ..., model: Optional[str] = ...
                  ) -> List[Prediction]: ...

    def sentiment(self, text, *, top_k=None, model=None):
        """Sentiment (negative / positive) of one text -> Prediction, or of a list of texts -> list, in order."""
        if isinstance(text, str):
            return _base.prediction(self._json(_base.text_call(text, top_k, model)))
        results: List[Prediction] = []
        for chunk in _base.batches(list(text), self._settings.max_batch_items, self._settings.max_request_chars):
            results += _base.predictions(self._json(_base.text_call(chunk, top_k, model)))
        return results

    # ------------------------------------------------------------------ style transfer

    def style(self, content: ImageInput, preset: Union[str, Sequence[str], None] = None,
              style: Optional[ImageOrImages] = None, **options: OptionValue) -> StyleJob:
        """Submit a style-transfer job; returns its handle at once (the job runs on the server).

        content: the photo; preset: a preset painting's name, or several (a blend); style: an image, or several;
        options: the form fields of POST /v1/style/jobs (size, steps, style_weight, content_weight, tv_weight,
        init, seed, preserve_color, style_scale, style_weights (one per style: presets first, then uploaded
        styles), content_layers, style_layers). Client.style_options() gives their defaults and bounds."""
        body = self._json(_base.style_call(content, preset, style, options))
        return StyleJob(self, JobInfo.from_json(body))

    def job(self, job_id: str) -> StyleJob:
        """The handle of an existing job (its current state fetched)."""
        return StyleJob(self, self._job_info(job_id))

    def jobs(self, limit: int = 20, offset: int = 0) -> List[StyleJob]:
        """Recent jobs, newest first (only this API key's, unless it is an admin key)."""
        body = self._json(Call("GET", _base.STYLE_JOBS, params={"limit": limit, "offset": offset}))
        return [StyleJob(self, JobInfo.from_json(item)) for item in body["jobs"]]

    def presets(self) -> List[Preset]:
        return _base.preset_list(self._json(Call("GET", f"{_base.API}/style/presets")))

    def style_options(self) -> dict:
        """Every submit field's default and bounds (GET /v1/style/options)."""
        return self._json(Call("GET", f"{_base.API}/style/options"))

    def style_estimate(self, **params: Any) -> dict:
        """How long a job would take if submitted now (GET /v1/style/estimate: size, steps, style_count, width,
        height)."""
        return self._json(Call("GET", f"{_base.API}/style/estimate",
                               params={k: v for k, v in params.items() if v is not None}))

    def _job_info(self, job_id: str) -> JobInfo:
        return JobInfo.from_json(self._json(Call("GET", _base.job_path(job_id))))


class StyleJob:
    """A submitted style-transfer job. `info` is its state as last seen; status() fetches it again."""

    def __init__(self, client: Client, info: JobInfo):
        self.client = client
        self.info = info
        self.report = WaitReport()

    @property
    def id(self) -> str:
        return self.info.id

    def __repr__(self) -> str:
        p = self.info.progress
        return f"<StyleJob {self.id} {self.info.status} {p.step}/{p.total}>"

    # ------------------------------------------------------------------ state

    def status(self) -> JobInfo:
        """The job now (GET /v1/style/jobs/{id})."""
        self.info = self.client._job_info(self.id)
        return self.info

    def cancel(self) -> JobInfo:
        """Cancel the job if it is queued or running (a running one stops within one step); a finished job is left
        as it is. Returns the job's state afterwards."""
        if self.status().finished:
            return self.info
        response = self.client._send(Call("DELETE", _base.job_path(self.id)))
        if response.status_code == 200:
            self.info = JobInfo.from_json(response.json())
        return self.info

    def delete(self) -> None:
        """Delete a finished job and its images (a queued or running one is cancelled first)."""
        if not self.status().finished:
            self.cancel()
        self.client._send(Call("DELETE", _base.job_path(self.id)))

    # ------------------------------------------------------------------ images

    def result(self, timeout: Optional[float] = None) -> bytes:
        """The stylised image (PNG bytes); waits for the job first if it has not finished. JobFailed or
        JobCancelled if it ended without one."""
        if not self.info.finished:
            self.wait(timeout=timeout)
        _base.raise_for_outcome(self.info)
        return self.client._send(Call("GET", _base.job_path(self.id, "/result"),
                                      headers={"Accept": "image/png"})).content

    def save(self, path: Union[str, Path], timeout: Optional[float] = None) -> Path:
        """Write the result PNG to `path` (waiting for the job if needed); returns the path."""
        data = self.result(timeout=timeout)
        target = Path(path)
        target.write_bytes(data)
        return target

    def preview(self) -> bytes:
        """The latest intermediate image (PNG bytes); Conflict (409) before the first step."""
        return self.client._send(Call("GET", _base.job_path(self.id, "/preview"),
                                      headers={"Accept": "image/png"})).content

    # ------------------------------------------------------------------ following

    def events(self) -> Iterator[StyleEvent]:
        """The job's server-sent events from one connection, as they come (no reconnection: see wait())."""
        with self.client._http.stream("GET", _base.job_path(self.id, "/events"),
                                      headers={"Accept": "text/event-stream"},
                                      timeout=self.client.timeout) as response:
            if response.status_code != 200:
                response.read()
                raise api_error(response, _base.retry_after_of(response))
            parser = SSEParser()
            for line in response.iter_lines():
                event = parser.feed(line)
                if event is not None:
                    yield event

    def wait(self, progress: ProgressArg = False, *, timeout: Optional[float] = None, poll_interval: float = 1.0,
             raise_on_failure: bool = True) -> StyleJob:
        """Follow the job until it finishes; returns this handle (so `client.style(...).wait().save("out.png")`).

        progress: True draws a progress bar on stderr, a callable gets every JobInfo, a ProgressBar draws on its
        own stream. The job is followed through its event stream; a stream that drops is re-opened (Last-Event-ID
        sent when the server gave event ids), and after repeated failures or a refusal (e.g. 429, too many streams
        on the job) the job is polled every poll_interval seconds instead, the stream tried again now and then.
        timeout: seconds in all (WaitTimeout). JobFailed / JobCancelled when the job ends without a result, unless
        raise_on_failure=False. `self.report` says how it went (connections, reconnects, polls, fallback)."""
        follow = Follow(self.info, progress, timeout, poll_interval, label=f"job {self.id[:8]}")
        try:
            follow.reporter.update(self.info)
            while not follow.info.finished:
                follow.check_deadline()
                delay = self._stream_once(follow) if follow.mode == "stream" else self._poll_once(follow)
                if not follow.info.finished and delay:
                    time.sleep(follow.sleep_s(delay))
        finally:
            self.info, self.report = follow.info, follow.report
            follow.close()
        if raise_on_failure:
            _base.raise_for_outcome(self.info)
        return self

    def _stream_once(self, follow: Follow) -> float:
        http = self.client._http
        try:
            with http.stream("GET", _base.job_path(self.id, "/events"), headers=follow.stream_headers(),
                             timeout=follow.stream_timeout(self.client.timeout)) as response:
                if response.status_code != 200:
                    response.read()
                    follow.refused(api_error(response, _base.retry_after_of(response)))
                    return 0.0
                content_type = response.headers.get("content-type", "")
                if not content_type.startswith("text/event-stream"):
                    follow.not_a_stream(content_type)
                    return 0.0
                follow.connected()
                parser = SSEParser(follow.report.last_event_id)
                for line in response.iter_lines():
                    event = parser.feed(line)
                    if event is None:
                        follow.check_deadline()
                        continue
                    outcome = follow.event(event, parser.retry_ms)
                    if outcome == FINISHED:
                        return 0.0
                    if outcome == SHUTDOWN:
                        return follow.lost("the server is restarting")
            return follow.lost("the stream ended before the job")
        except httpx.RequestError as exc:
            follow.check_deadline()
            return follow.lost(_base.describe_drop(exc))

    def _poll_once(self, follow: Follow) -> float:
        try:
            info = self.client._job_info(self.id)
        except (TransportError, ServiceUnavailable) as exc:
            return follow.poll_failed(exc)
        return follow.polled(info)


__all__ = ["Client", "StyleJob"]
