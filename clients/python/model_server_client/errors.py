"""One exception hierarchy for everything the client raises.

    ModelServerError
    ├── TransportError            the server could not be reached, or the connection broke (no HTTP answer)
    ├── APIError                  the server answered an error: .status_code, .detail (its own words), .retry_after
    │   ├── BadRequest (400)  AuthenticationError (401)  PermissionDenied (403)  NotFound (404)
    │   ├── Conflict (409)  Gone (410)  PayloadTooLarge (413)  UnsupportedMediaType (415)
    │   ├── ValidationError (422, .errors: the failed checks)  RateLimited (429)
    │   └── ServerError (5xx)
    │       └── ServiceUnavailable (503)  InsufficientStorage (507)
    ├── JobError                  a style job ended without a result: .job (the final JobInfo)
    │   ├── JobFailed             status failed (.job.error says why)
    │   └── JobCancelled          status cancelled
    ├── WaitTimeout               wait(timeout=...) ran out before the job finished (also a TimeoutError)
    └── InputError                an input this client cannot send (unreadable file, wrong array type; also a ValueError)
"""
from __future__ import annotations

import json
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # pragma: no cover
    import httpx

    from model_server_client.datatypes import JobInfo


class ModelServerError(Exception):
    """Base class of every error this package raises."""


class TransportError(ModelServerError):
    """No HTTP answer: connection refused, DNS failure, timeout, connection closed mid-answer."""

    def __init__(self, message: str, url: str | None = None):
        super().__init__(message)
        self.url = url


class InputError(ModelServerError, ValueError):
    """An input the client cannot turn into a request (a missing file, an array of the wrong dtype or shape)."""


class WaitTimeout(ModelServerError, TimeoutError):
    """A job did not finish within the time given to wait()."""

    def __init__(self, message: str, job: JobInfo | None = None):
        super().__init__(message)
        self.job = job


class JobError(ModelServerError):
    """A style job ended without a result."""

    def __init__(self, message: str, job: JobInfo):
        super().__init__(message)
        self.job = job


class JobFailed(JobError):
    """The job failed; `job.error` is the server's explanation."""


class JobCancelled(JobError):
    """The job was cancelled."""


class APIError(ModelServerError):
    """The server answered with an error status. `detail` is the server's own sentence."""

    status_code: int = 0

    def __init__(self, status_code: int, detail: str, *, method: str | None = None, url: str | None = None,
                 headers: dict[str, str] | None = None, errors: list[dict[str, Any]] | None = None,
                 request_id: str | None = None, retry_after: float | None = None):
        self.status_code = status_code
        self.detail = detail
        self.method = method
        self.url = url
        self.headers = headers or {}
        self.errors = errors
        self.request_id = request_id
        self.retry_after = retry_after
        super().__init__(str(self))

    @property
    def reason(self) -> str:
        try:
            return HTTPStatus(self.status_code).phrase
        except ValueError:
            return "Error"

    def __str__(self) -> str:
        return f"{self.status_code} {self.reason}: {self.detail}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status_code={self.status_code}, detail={self.detail!r})"


class BadRequest(APIError):
    """400: an undecodable image, bad base64, a body that is not JSON."""


class AuthenticationError(APIError):
    """401: the server needs an API key (`api_key=`, MODEL_SERVER_API_KEY) or refused the one given."""


class PermissionDenied(APIError):
    """403."""


class NotFound(APIError):
    """404: an unknown model, preset or job (or another API key's job)."""


class Conflict(APIError):
    """409: e.g. a style job's result asked for while it is queued or running."""


class Gone(APIError):
    """410: a style job's result after it failed or was cancelled."""


class PayloadTooLarge(APIError):
    """413: a body over the server's MAX_UPLOAD_BYTES, an image over MAX_IMAGE_PIXELS, texts over MAX_REQUEST_CHARS."""


class UnsupportedMediaType(APIError):
    """415: a file that is not a supported image."""


class ValidationError(APIError):
    """422: an option out of range, a missing field; `errors` lists the failed checks when the server gave them."""


class RateLimited(APIError):
    """429: the style queue is full, this key's queue cap, too many event streams (`retry_after` in seconds)."""


class ServerError(APIError):
    """5xx."""


class ServiceUnavailable(ServerError):
    """503: models still loading, the job store unreachable, the server shutting down (`retry_after`)."""


class InsufficientStorage(ServerError):
    """507: no room on the server to store a style job."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest, 401: AuthenticationError, 403: PermissionDenied, 404: NotFound, 409: Conflict, 410: Gone,
    413: PayloadTooLarge, 415: UnsupportedMediaType, 422: ValidationError, 429: RateLimited,
    503: ServiceUnavailable, 507: InsufficientStorage,
}


def error_class(status_code: int) -> type[APIError]:
    if status_code in _BY_STATUS:
        return _BY_STATUS[status_code]
    return ServerError if status_code >= 500 else APIError


def api_error(response: httpx.Response, retry_after: Optional[float] = None) -> APIError:
    """The APIError for an error response (its body must have been read): the server's `detail` when it sent JSON,
    else the body's text (e.g. from a proxy in front of it)."""
    detail: str | None = None
    errors = None
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        body = None
    if isinstance(body, dict):
        raw = body.get("detail", body.get("error"))
        if isinstance(raw, str):
            detail = raw
        elif raw is not None:
            detail = json.dumps(raw)
        if isinstance(body.get("errors"), list):
            errors = body["errors"]
    if detail is None:
        text = response.text.strip()
        detail = " ".join(text.split())[:500] if text else (response.reason_phrase or "no detail")
    request = response.request
    return error_class(response.status_code)(
        response.status_code, detail, method=request.method if request else None,
        url=str(request.url) if request else None, headers=dict(response.headers), errors=errors,
        request_id=response.headers.get("x-request-id"), retry_after=retry_after)
