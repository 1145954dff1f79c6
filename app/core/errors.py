"""Client errors raised anywhere below the routes, rendered as JSON {"detail": "..."}."""
import json


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


async def send_json_error(send, status: int, detail: str, extra_headers: list[tuple[bytes, bytes]] = ()) -> None:
    """Answer {"detail": ...} straight from an ASGI middleware, before any route (and its handlers) runs."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
