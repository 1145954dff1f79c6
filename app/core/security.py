"""API-key authentication for /v1 as pure ASGI middleware: it answers 401 before the body is read, so an
unauthenticated upload costs nothing. Off unless API_KEYS is set.

A key is accepted from `Authorization: Bearer <key>` or `X-API-Key: <key>` and compared in constant time
against every configured key. Open without a key: /healthz, /readyz, /metrics, /, /web/*, /docs, /openapi.json
(everything outside /v1). CORS preflights (OPTIONS) never reach this middleware when CORS is on: the CORS
middleware sits outside it and answers them.
"""
import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.errors import send_json_error

PROTECTED_PREFIX = "/v1"


class APIKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: list[str]):
        self.app = app
        self.keys = [key.encode() for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or not _protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        presented = _presented_key(scope)
        if presented is None:
            await _send_401(send, "missing API key; send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
            return
        if not self._valid(presented):
            await _send_401(send, "invalid API key")
            return
        await self.app(scope, receive, send)

    def _valid(self, presented: bytes) -> bool:
        valid = False
        for key in self.keys:  # no early exit: the time taken does not say which key came close
            valid |= hmac.compare_digest(presented, key)
        return valid


def _protected(path: str) -> bool:
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")


def _presented_key(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"x-api-key" and value.strip():
            return value.strip()
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
    return None


async def _send_401(send: Send, detail: str) -> None:
    await send_json_error(send, 401, detail, [(b"www-authenticate", b"Bearer")])
