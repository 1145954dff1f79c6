"""Client errors raised anywhere below the routes, rendered as JSON {"detail": "..."} (or, on the Open Inference
Protocol's /v2 routes, as that protocol's {"error": "..."})."""
import json

from app.core.config import V2_PREFIX


def error_body(path: str, detail: str) -> dict:
    """The error object a client of this path expects: /v1's {"detail"} or the Open Inference Protocol's {"error"}."""
    if path == V2_PREFIX or path.startswith(V2_PREFIX + "/"):
        return {"error": detail}
    return {"detail": detail}


class APIError(Exception):
    status_code = 400

    def __init__(self, detail: str, status_code: int | None = None, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.headers = headers
        if status_code is not None:
            self.status_code = status_code


class BadInput(APIError):
    """Undecodable or truncated image, bad base64, unusable content (400)."""
    status_code = 400


class PayloadTooLarge(APIError):
    """Body over MAX_UPLOAD_BYTES or image over MAX_IMAGE_PIXELS (413)."""
    status_code = 413


class UnsupportedMediaType(APIError):
    """Not an image, an image format we do not read, or a wrong Content-Type (415)."""
    status_code = 415


class NotFound(APIError):
    status_code = 404


class Unprocessable(APIError):
    """Schema errors found outside pydantic (422)."""
    status_code = 422


class ServiceUnavailable(APIError):
    status_code = 503


async def send_json_error(scope, send, status: int, detail: str,
                          extra_headers: list[tuple[bytes, bytes]] = ()) -> None:
    """Answer the path's error object straight from an ASGI middleware, before any route (and its handlers) runs."""
    body = json.dumps(error_body(scope.get("path", ""), detail)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
