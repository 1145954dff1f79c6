"""API-key authentication for /v1 as pure ASGI middleware: it answers 401 before the body is read, so an
unauthenticated upload costs nothing. Off unless API_KEYS is set.

API_KEYS is a comma-separated list of entries `KEY`, `NAME:KEY` or `NAME:KEY:admin`. A key is accepted from
`Authorization: Bearer <key>` or `X-API-Key: <key>` and compared in constant time against every configured key;
the request then carries its Caller (scope["user"]): the name (logs, metrics and job ownership show it, never the
key; an unnamed key is "key1", "key2"... by position) and whether it is an admin (sees every caller's style
jobs). Open without a key: /healthz, /readyz, /v2/health/*, /metrics, /, /web/*, /docs, /openapi.json (everything
outside /v1 and /v2).
CORS preflights (OPTIONS) never reach this middleware when CORS is on: the CORS middleware sits outside it.
"""
import hmac
import re
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.config import API_PREFIX, V2_HEALTH_PREFIX, V2_PREFIX
from app.core.errors import send_json_error

ADMIN_FLAG = "admin"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


@dataclass(frozen=True)
class Caller:
    """Who sent a request, as far as the API knows: a key's name, never the key."""

    name: str
    admin: bool = False


@dataclass(frozen=True)
class APIKey:
    secret: bytes
    caller: Caller


def parse_api_keys(entries: list[str]) -> list[APIKey]:
    """API_KEYS entries -> keys; ValueError with a sentence naming the entry (never its key) when malformed."""
    keys: list[APIKey] = []
    for position, entry in enumerate(entries, 1):
        parts = entry.split(":")
        flags = parts[2:] if len(parts) >= 3 else []
        if len(parts) == 1:
            name, secret = f"key{position}", parts[0]
        elif len(parts) in (2, 3) and flags in ([], [ADMIN_FLAG]):
            name, secret = parts[0].strip(), parts[1].strip()
        else:
            raise ValueError(f"API_KEYS entry {position} is not KEY, NAME:KEY or NAME:KEY:admin")
        if not _NAME_RE.match(name) or not secret:
            raise ValueError(f"API_KEYS entry {position}: the name must be 1-64 letters, digits or _.@- and the "
                             "key not empty")
        keys.append(APIKey(secret.encode(), Caller(name, admin=bool(flags))))
    names = [key.caller.name for key in keys]
    if len(set(names)) != len(names):
        raise ValueError("API_KEYS names must be unique (each names one caller)")
    return keys


class APIKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: list[APIKey]):
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or not _protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        presented = _presented_key(scope)
        if presented is None:
            await _send_401(scope, send, "missing API key; send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
            return
        caller = self._caller(presented)
        if caller is None:
            await _send_401(scope, send, "invalid API key")
            return
        scope["user"] = caller
        await self.app(scope, receive, send)

    def _caller(self, presented: bytes) -> Caller | None:
        found = None
        for key in self.keys:  # no early exit: the time taken does not say which key came close
            if hmac.compare_digest(presented, key.secret):
                found = key.caller
        return found


def caller_of(scope: Scope) -> Caller | None:
    """The authenticated caller of a request; None when API_KEYS is off (one local user, who sees everything)."""
    user = scope.get("user")
    return user if isinstance(user, Caller) else None


def _protected(path: str) -> bool:
    """/v1 and the Open Inference Protocol's /v2, except /v2's health probes (open, like /healthz and /readyz)."""
    if path.startswith(V2_HEALTH_PREFIX + "/"):
        return False
    return any(path == prefix or path.startswith(prefix + "/") for prefix in (API_PREFIX, V2_PREFIX))


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


async def _send_401(scope: Scope, send: Send, detail: str) -> None:
    await send_json_error(scope, send, 401, detail, [(b"www-authenticate", b"Bearer")])
