"""Request body size limit as pure ASGI middleware, so oversized bodies are refused before being read."""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import PayloadTooLarge, send_json_error


class BodyTooLarge(PayloadTooLarge):
    """Raised from receive() once a streamed body passes the limit; a PayloadTooLarge so it renders as 413."""


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _send_413(scope, send, f"request body is {declared} bytes; the limit is {self.max_bytes} bytes "
                                  "(MAX_UPLOAD_BYTES)")
            return
        await self._stream_with_limit(scope, receive, send)

    async def _stream_with_limit(self, scope: Scope, receive: Receive, send: Send) -> None:
        """For bodies without Content-Length (chunked): count bytes as they arrive."""
        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(f"request body exceeds the limit of {self.max_bytes} bytes "
                                       "(MAX_UPLOAD_BYTES)")
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as exc:
            # Inside the routes the APIError handler answers; this covers reads outside them.
            if response_started:
                raise
            await _send_413(scope, send, exc.detail)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_413(scope: Scope, send: Send, detail: str) -> None:
    await send_json_error(scope, send, 413, detail, [(b"connection", b"close")])
