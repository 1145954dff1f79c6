"""Request bodies that stall or crowd the server, bounded as pure ASGI middleware around receive():

- a body read timeout (BODY_TIMEOUT_S) on every route: waiting that long for the next body bytes ends the request
  with 408 and closes the connection;
- a minimum average body rate (MIN_BODY_RATE_BYTES_S, default 1024 B/s) on every route, so a body trickled just inside
  the read timeout (1 byte every 29 s) cannot hold a connection, an upload slot and a temporary file for good. The
  body gets BODY_TIMEOUT_S as a head start, then must keep up: after t seconds of waiting for it, at least
  MIN_BODY_RATE_BYTES_S x (t - BODY_TIMEOUT_S) bytes must have arrived, or it is answered 408 (the rate and the
  setting named, Connection: close). Said the other way round, a body of N bytes has BODY_TIMEOUT_S + N /
  MIN_BODY_RATE_BYTES_S seconds in all, so the rule is also a total deadline that grows with the body's length,
  declared or not (chunked bodies too), and it never ends a body early for a stall at its start. A slow but real
  upload is far inside it: 10 MB from a phone at 50 KB/s must have sent 0.15 MB after 3 min and has sent 9 MB; the
  trickle above is ended as its head start runs out, 30 s after its first read. Only time spent waiting in receive()
  counts (from the first read): time the app spends on the bytes (multipart parsing, spooling to disk on a loaded
  machine) is not the client's. 0 turns the rate check off (BODY_TIMEOUT_S still holds);
- a cap on large uploads received at once (MAX_CONCURRENT_UPLOADS): a body over LARGE_UPLOAD_BYTES, declared by
  Content-Length or counted as it streams, holds a slot from its first read until it is received (or the request
  ends); with every slot taken, the next one is answered 503 with Retry-After (the server is busy as a whole, not
  this caller: 429 is the answer to a caller's own excess) and its connection closed.

A slot is taken only when the app reads the body, so a request refused before that (401, 413 from Content-Length)
never holds one. A body still arriving after such an early answer is not read by anyone here: the server's protocol
closes that connection once the answer is sent (app/server/protocol.py). Temporary files: starlette spools multipart
files past 1 MiB to unnamed temporary files and closes them when the form's parsing fails (a timeout here, a
disconnect) or the route's `async with request.form()` ends, so an upload that ends however it ends leaves no file
open (tests/test_transport_limits.py).
"""
from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import APIError, ServiceUnavailable, send_json_error
from app.core.limits import _content_length

RETRY_AFTER_S = 5  # uploads take seconds; a refused client retries after this


class BodyTimeout(APIError):
    status_code = 408


class UploadsBusy(ServiceUnavailable):
    """503: every upload slot is taken."""


class UploadSlots:
    """A count of large uploads in progress, never waited on: a request either gets a slot now or is refused."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_use = 0

    def try_acquire(self) -> bool:
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        self.in_use -= 1


class _GuardedBody:
    """One request's receive(), timed while the body is incomplete, taking a slot once the body is large."""

    def __init__(self, guard: UploadGuardMiddleware, scope: Scope, receive: Receive):
        self.guard = guard
        self._receive = receive
        self.declared = _content_length(scope)
        self.received = 0
        self.waited = 0.0  # seconds spent waiting in receive() for body bytes, from the first read
        self.done = False
        self.holds_slot = False

    async def receive(self) -> Message:
        if self.done:
            return await self._receive()  # after the body: waiting for a disconnect, untimed
        self._take_slot_if_large(self.declared or 0)
        timeout, rate_bound = self.guard.timeout_s, False
        if self.guard.min_rate:
            # Waiting past BODY_TIMEOUT_S + received / rate puts the body below the rate: that is the latest the
            # next bytes may come.
            allowed = self.guard.timeout_s + self.received / self.guard.min_rate - self.waited
            if allowed < timeout:
                timeout, rate_bound = allowed, True
        started = time.monotonic()
        try:
            if timeout <= 0:
                raise TimeoutError
            async with asyncio.timeout(timeout):
                message = await self._receive()
        except TimeoutError:
            self.waited += time.monotonic() - started
            self.release()
            raise (self._too_slow() if rate_bound else self._stalled()) from None
        self.waited += time.monotonic() - started
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.done = True
            self.release()
        else:
            self.received += len(message.get("body", b""))
            self._take_slot_if_large(self.received)
        return message

    def _stalled(self) -> BodyTimeout:
        return BodyTimeout(f"no bytes of the request body arrived for {self.guard.timeout_s:g} s "
                           "(BODY_TIMEOUT_S); the upload is abandoned, send it again",
                           headers={"Connection": "close"})

    def _too_slow(self) -> BodyTimeout:
        rate, grace = self.guard.min_rate, self.guard.timeout_s
        return BodyTimeout(f"the request body is arriving too slowly: {self.received} bytes in "
                           f"{self.waited:.0f} s, while this server needs at least {rate} bytes/s once a body has had "
                           f"{grace:g} s to start (MIN_BODY_RATE_BYTES_S); the upload is abandoned, send it again "
                           "over a faster connection", headers={"Connection": "close"})

    def _take_slot_if_large(self, size: int) -> None:
        if self.holds_slot or size <= self.guard.large_bytes:
            return
        slots = self.guard.slots
        if not slots.try_acquire():
            self.done = True
            raise UploadsBusy(f"the server is already receiving {slots.limit} large uploads (over "
                              f"{self.guard.large_bytes} bytes), the most it takes at once "
                              f"(MAX_CONCURRENT_UPLOADS); retry in {RETRY_AFTER_S} s",
                              headers={"Retry-After": str(RETRY_AFTER_S), "Connection": "close"})
        self.holds_slot = True

    def release(self) -> None:
        if self.holds_slot:
            self.holds_slot = False
            self.guard.slots.release()


class UploadGuardMiddleware:
    def __init__(self, app: ASGIApp, timeout_s: float, max_concurrent: int, large_bytes: int,
                 min_rate: int = 0):
        self.app = app
        self.timeout_s = timeout_s
        self.min_rate = min_rate  # bytes/s a body must average after its head start of timeout_s; 0: unchecked
        self.large_bytes = large_bytes
        self.slots = UploadSlots(max_concurrent)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = _GuardedBody(self, scope, receive)
        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, body.receive, tracking_send)
        except (BodyTimeout, UploadsBusy) as exc:
            # Inside the routes the APIError handler answers; this covers reads outside them.
            if response_started:
                raise
            await send_json_error(scope, send, exc.status_code, exc.detail,
                                  [(k.lower().encode(), v.encode()) for k, v in (exc.headers or {}).items()])
        finally:
            body.release()

