"""The asyncio client and its style-job handle: the methods of Client and StyleJob, to be awaited."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Sequence, Union, overload
from urllib.parse import quote

import httpx

from model_server_client import _base
from model_server_client._base import FINISHED, SHUTDOWN, Call, Follow, ImageOrImages, OptionValue
from model_server_client.errors import ServiceUnavailable, TransportError, WaitTimeout, api_error
from model_server_client.images import ImageInput
from model_server_client.progress import ProgressArg, SSEParser
from model_server_client.retry import RetryPolicy
from model_server_client.datatypes import JobInfo, ModelInfo, Prediction, Preset, RetryEvent, StyleEvent, WaitReport


class AsyncClient:
    """The asyncio twin of Client (same arguments): `async with AsyncClient(url) as client: await client.models()`.
    Images are read and encoded on the event loop before sending (they are small for these models)."""

    def __init__(self, base_url: Optional[str] = None, api_key: Optional[str] = None, *,
                 timeout: Union[float, httpx.Timeout, None] = _base.DEFAULT_TIMEOUT_S,
                 retries: Union[int, RetryPolicy, None] = None,
                 on_retry: Optional[Callable[[RetryEvent], Any]] = None,
                 headers: Optional[Dict[str, str]] = None, verify: Any = True,
                 transport: Optional[httpx.AsyncBaseTransport] = None,
                 max_batch_items: int = _base.MAX_BATCH_ITEMS, max_request_chars: int = _base.MAX_REQUEST_CHARS):
        self._settings = _base.Settings(base_url, api_key, retries, on_retry, max_batch_items, max_request_chars)
        self.timeout = _base.as_timeout(timeout)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=_base.default_headers(self.api_key, headers),
                                       timeout=self.timeout, verify=verify, transport=transport)

    @property
    def base_url(self) -> str:
        return self._settings.base_url

    @property
    def api_key(self) -> Optional[str]:
        return self._settings.api_key

    @property
    def retry(self) -> RetryPolicy:
        return self._settings.retry

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncClient({self.base_url!r})"

    # ------------------------------------------------------------------ sending

    async def _send(self, call: Call) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(call.method, call.path, **call.kwargs())
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
            await asyncio.sleep(delay)

    async def _json(self, call: Call) -> Any:
        return (await self._send(call)).json()

    # ------------------------------------------------------------------ health and models

    async def health(self) -> dict:
        return await self._json(Call("GET", "/healthz"))

    async def readiness(self) -> dict:
        try:
            response = await self._http.get("/readyz")
        except httpx.RequestError as exc:
            raise _base.transport_error(exc, self.base_url) from None
        if response.status_code not in (200, 503):
            raise api_error(response)
        return response.json()

    async def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.2) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                state = await self.readiness()
                if state.get("status") == "ready":
                    return state
                if state.get("status") == "failed":
                    raise ServiceUnavailable(503, f"model loading failed: {state.get('error')}")
            except TransportError:
                if time.monotonic() >= deadline:
                    raise
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"the server at {self.base_url} is not ready after {timeout:g} s")
            await asyncio.sleep(interval)

    async def models(self) -> List[ModelInfo]:
        return _base.model_list(await self._json(Call("GET", f"{_base.API}/models")))

    async def model(self, name: str) -> ModelInfo:
        return ModelInfo.from_json(await self._json(Call("GET", f"{_base.API}/models/{quote(name, safe='')}")))

    # ------------------------------------------------------------------ classifiers

    @overload
    async def predict_digit(self, image: ImageInput, *, top_k: Optional[int] = ..., model: Optional[str] = ...
                            ) -> Prediction: ...

    @overload
    async def predict_digit(self, image: Sequence[ImageInput], *, top_k: Optional[int] = ...,
                            model: Optional[str] = ...) -> List[Prediction]: ...

    async def predict_digit(self, image, *, top_k=None, model=None):
        return await self._predict_images("digits", image, top_k, model)

    @overload
    async def predict_object(self, image: ImageInput, *, top_k: Optional[int] = ..., model: Optional[str] = ...
                             ) -> Prediction: ...

    @overload
    async def predict_object(self, image: Sequence[ImageInput], *, top_k: Optional[int] = ...,
                             model: Optional[str] = ...) -> List[Prediction]: ...

    async def predict_object(self, image, *, top_k=None, model=None):
        return await self._predict_images("objects", image, top_k, model)

    async def _predict_images(self, task: str, image: ImageOrImages, top_k: Optional[int], model: Optional[str]):
        if not _base.is_many(image):
            return _base.prediction(await self._json(_base.image_call(task, image, top_k, model)))
        results: List[Prediction] = []
        for chunk in _base.batches(list(image), self._settings.max_batch_items):
            results += _base.predictions(await self._json(_base.images_call(task, chunk, top_k, model)))
        return results

    @overload
    async def sentiment(self, text: str, *, top_k: Optional[int] = ..., model: Optional[str] = ...
                        ) -> Prediction: ...

    @overload
    async def sentiment(self, text: Sequence[str], *, top_k: Optional[int] = ..., model: Optional[str] = ...
                        ) -> List[Prediction]: ...

    async def sentiment(self, text, *, top_k=None, model=None):
        if isinstance(text, str):
            return _base.prediction(await self._json(_base.text_call(text, top_k, model)))
        results: List[Prediction] = []
        for chunk in _base.batches(list(text), self._settings.max_batch_items, self._settings.max_request_chars):
            results += _base.predictions(await self._json(_base.text_call(chunk, top_k, model)))
        return results

    # ------------------------------------------------------------------ style transfer

    async def style(self, content: ImageInput, preset: Union[str, Sequence[str], None] = None,
                    style: Optional[ImageOrImages] = None, **options: OptionValue) -> AsyncStyleJob:
        body = await self._json(_base.style_call(content, preset, style, options))
        return AsyncStyleJob(self, JobInfo.from_json(body))

    async def job(self, job_id: str) -> AsyncStyleJob:
        return AsyncStyleJob(self, await self._job_info(job_id))

    async def jobs(self, limit: int = 20, offset: int = 0) -> List[AsyncStyleJob]:
        body = await self._json(Call("GET", _base.STYLE_JOBS, params={"limit": limit, "offset": offset}))
        return [AsyncStyleJob(self, JobInfo.from_json(item)) for item in body["jobs"]]

    async def presets(self) -> List[Preset]:
        return _base.preset_list(await self._json(Call("GET", f"{_base.API}/style/presets")))

    async def style_options(self) -> dict:
        return await self._json(Call("GET", f"{_base.API}/style/options"))

    async def style_estimate(self, **params: Any) -> dict:
        return await self._json(Call("GET", f"{_base.API}/style/estimate",
                                     params={k: v for k, v in params.items() if v is not None}))

    async def _job_info(self, job_id: str) -> JobInfo:
        return JobInfo.from_json(await self._json(Call("GET", _base.job_path(job_id))))


class AsyncStyleJob:
    """The asyncio twin of StyleJob."""

    def __init__(self, client: AsyncClient, info: JobInfo):
        self.client = client
        self.info = info
        self.report = WaitReport()

    @property
    def id(self) -> str:
        return self.info.id

    def __repr__(self) -> str:
        p = self.info.progress
        return f"<AsyncStyleJob {self.id} {self.info.status} {p.step}/{p.total}>"

    async def status(self) -> JobInfo:
        self.info = await self.client._job_info(self.id)
        return self.info

    async def cancel(self) -> JobInfo:
        if (await self.status()).finished:
            return self.info
        response = await self.client._send(Call("DELETE", _base.job_path(self.id)))
        if response.status_code == 200:
            self.info = JobInfo.from_json(response.json())
        return self.info

    async def delete(self) -> None:
        if not (await self.status()).finished:
            await self.cancel()
        await self.client._send(Call("DELETE", _base.job_path(self.id)))

    async def result(self, timeout: Optional[float] = None) -> bytes:
        if not self.info.finished:
            await self.wait(timeout=timeout)
        _base.raise_for_outcome(self.info)
        response = await self.client._send(Call("GET", _base.job_path(self.id, "/result"),
                                                headers={"Accept": "image/png"}))
        return response.content

    async def save(self, path: Union[str, Path], timeout: Optional[float] = None) -> Path:
        data = await self.result(timeout=timeout)
        target = Path(path)
        target.write_bytes(data)
        return target

    async def preview(self) -> bytes:
        response = await self.client._send(Call("GET", _base.job_path(self.id, "/preview"),
                                                headers={"Accept": "image/png"}))
        return response.content

    async def events(self) -> AsyncIterator[StyleEvent]:
        async with self.client._http.stream("GET", _base.job_path(self.id, "/events"),
                                            headers={"Accept": "text/event-stream"},
                                            timeout=self.client.timeout) as response:
            if response.status_code != 200:
                await response.aread()
                raise api_error(response, _base.retry_after_of(response))
            parser = SSEParser()
            async for line in response.aiter_lines():
                event = parser.feed(line)
                if event is not None:
                    yield event

    async def wait(self, progress: ProgressArg = False, *, timeout: Optional[float] = None,
                   poll_interval: float = 1.0, raise_on_failure: bool = True) -> AsyncStyleJob:
        """As StyleJob.wait(): event stream, reconnection, polling fallback; returns this handle."""
        follow = Follow(self.info, progress, timeout, poll_interval, label=f"job {self.id[:8]}")
        try:
            follow.reporter.update(self.info)
            while not follow.info.finished:
                follow.check_deadline()
                if follow.mode == "stream":
                    delay = await self._stream_once(follow)
                else:
                    delay = await self._poll_once(follow)
                if not follow.info.finished and delay:
                    await asyncio.sleep(follow.sleep_s(delay))
        finally:
            self.info, self.report = follow.info, follow.report
            follow.close()
        if raise_on_failure:
            _base.raise_for_outcome(self.info)
        return self

    async def _stream_once(self, follow: Follow) -> float:
        http = self.client._http
        try:
            async with http.stream("GET", _base.job_path(self.id, "/events"), headers=follow.stream_headers(),
                                   timeout=follow.stream_timeout(self.client.timeout)) as response:
                if response.status_code != 200:
                    await response.aread()
                    follow.refused(api_error(response, _base.retry_after_of(response)))
                    return 0.0
                content_type = response.headers.get("content-type", "")
                if not content_type.startswith("text/event-stream"):
                    follow.not_a_stream(content_type)
                    return 0.0
                follow.connected()
                parser = SSEParser(follow.report.last_event_id)
                async for line in response.aiter_lines():
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

    async def _poll_once(self, follow: Follow) -> float:
        try:
            info = await self.client._job_info(self.id)
        except (TransportError, ServiceUnavailable) as exc:
            return follow.poll_failed(exc)
        return follow.polled(info)


__all__ = ["AsyncClient", "AsyncStyleJob"]
