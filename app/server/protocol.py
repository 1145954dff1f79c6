"""uvicorn's httptools protocol with bounds on what a connection may cost before the app sees a request.

Plain uvicorn (0.54, httptools) reads a request head of any size (1 GiB of headers cost 1 GiB of memory, then
got a 200) and waits for it forever. `BoundedHttpToolsProtocol` adds, per connection:

- a head size cap (MAX_HEADER_BYTES): the request line and headers, counted as the bytes arrive (httptools gathers
  one header of any length before its callback runs) and as they are parsed; more is answered 431;
- a head timeout (HEADER_TIMEOUT_S), from the first bytes of a request head to its end; then 408;
- the idle timeout (uvicorn's timeout_keep_alive, KEEP_ALIVE_TIMEOUT_S) armed on a new connection too: uvicorn arms
  it only after a response, so a connection that never sent a byte stayed open for good;
- an answer sent before its request body has all arrived (a 401, a 413 from Content-Length, a 404 or 415 that
  needs no body: the app answers without reading) ends the connection. Plain uvicorn keeps such a connection for a
  next request and drops the rest of the body as it comes, for as long as it comes: every byte received cancels the
  idle timeout, so a body trickled after a 401 held the connection for good. Here the answer carries
  Connection: close, and once it is sent the connection is half-closed (the client reads the whole answer, then
  the end), what still arrives is dropped unread, and it is closed when the client closes or after LINGER_S;
- a bounded graceful shutdown: uvicorn lets in-flight requests run for timeout_graceful_shutdown (SHUTDOWN_GRACE_S),
  then cancels their tasks but leaves their connections open; here every connection still open at that moment is
  closed (answered 503 first when its response had not started), so the lifespan shutdown runs after.

A refused request is answered as the app answers errors (JSON {"detail": ...}, Connection: close). The server then
reads no further request from the connection (what still arrives is dropped, never parsed or kept) and closes it
when the client has read the answer, or after LINGER_S: closing at once, with the client still sending, would
reset the connection and lose the answer.

Body read timeouts and the cap on uploads received at once are app middleware (app/core/uploads.py): they hold
under any server. `uvicorn app.main:app --http app.server.protocol:BoundedHttpToolsProtocol` uses this class
without the launcher; its limits then come from the settings (environment) too.
"""
from __future__ import annotations

import json
import logging
from asyncio import TimerHandle
from dataclasses import dataclass
from functools import lru_cache

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from app.core.config import Settings, get_settings

logger = logging.getLogger("uvicorn.error")
LINGER_S = 2.0  # how long a refused connection stays open for the client to read its answer


@dataclass(frozen=True)
class HeadLimits:
    max_header_bytes: int
    header_timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> HeadLimits:
        return cls(settings.max_header_bytes, settings.header_timeout_s)


@lru_cache(maxsize=1)
def _limits_from_environment() -> HeadLimits:
    return HeadLimits.from_settings(get_settings())


def error_response(status: int, detail: str, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A complete HTTP/1.1 response with the app's error body, {"detail": ...}, that closes the connection."""
    body = json.dumps({"detail": detail}).encode()
    head = [STATUS_LINE[status]]
    for name, value in default_headers:  # server, date: as on every other response
        head += [name, b": ", value, b"\r\n"]
    head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
             b"connection: close\r\n\r\n"]
    return b"".join(head) + body


class _CycleTransport:
    """The connection as one request's RequestResponseCycle sees it: uvicorn writes the answer and, for an answer
    that ends the connection, closes it through this. A close while the request body is still arriving becomes
    the protocol's lingering close (closing at once would reset a client still sending and could lose the answer)."""

    def __init__(self, protocol: BoundedHttpToolsProtocol, cycle: RequestResponseCycle):
        self._protocol = protocol
        self._cycle = cycle
        self._transport = protocol.transport
        self._head: bytes | None = None  # the status line and headers, held for the body's first write

    def write(self, data: bytes) -> None:
        """uvicorn writes an answer's head and its body separately: two sends, two TCP segments, and on loopback
        two wake-ups of the client. A head whose body is sure to follow (a Content-Length body, not HEAD, 204,
        304 or a chunked stream, whose head must leave at once) is held and sent with the body's first bytes."""
        if self._head is not None:
            data, self._head = self._head + data, None
        elif self._body_follows():
            self._head = data
            return
        self._transport.write(data)

    def _body_follows(self) -> bool:
        cycle = self._cycle
        return (cycle.response_started and not cycle.chunked_encoding and cycle.expected_content_length > 0
                and cycle.scope["method"] != "HEAD")

    def flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self.flush()
        self._protocol._close_after(self._cycle)

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    limits: HeadLimits | None = None  # set on the class `configured()` makes; None: read from the environment

    @classmethod
    def configured(cls, limits: HeadLimits) -> type[BoundedHttpToolsProtocol]:
        return type(cls.__name__, (cls,), {"limits": limits})

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.head_limits = self.limits or _limits_from_environment()
        self._in_head = True  # waiting for a request head or reading one (not its body)
        self._head_begun = False  # the parser has seen the start of the current head
        self._heads_done = 0
        self._head_streamed = 0  # bytes of the chunks that were all head
        self._head_parsed = 0  # request target and headers as parsed
        self._head_timer: TimerHandle | None = None
        self._end_timer: TimerHandle | None = None  # the linger of a refusal, or the shutdown grace
        self._refused = False

    # -- connection ---------------------------------------------------------------------------------------------

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered: the rest is dropped unread
        was_in_head, heads_before = self._in_head, self._heads_done
        super().data_received(data)
        if self._refused or not self._in_head:
            return
        whole_chunk_in_head = was_in_head and self._heads_done == heads_before
        if whole_chunk_in_head:
            self._head_streamed += len(data)
            if self._head_streamed > self.head_limits.max_header_bytes:
                self._refuse_oversized_head()
                return
        if self._head_timer is None and (whole_chunk_in_head or self._head_begun):
            self._head_timer = self.loop.call_later(self.head_limits.header_timeout_s, self._head_timed_out)

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # once answered, what follows in the chunk is nobody's business
            super().send_400_response(msg)

    # -- parser callbacks: after a refusal the rest of the chunk is parsed into nothing ---------------------------

    def on_message_begin(self) -> None:
        if not self._refused:
            super().on_message_begin()
            self._head_begun = True
            self._head_parsed = 0

    def on_url(self, url: bytes) -> None:
        if not self._refused:
            super().on_url(url)
            self._count_parsed(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._refused:
            super().on_header(name, value)
            self._count_parsed(len(name) + len(value) + 4)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._cancel_head_timer()
        self._in_head = self._head_begun = False
        self._head_streamed = 0
        self._heads_done += 1
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not before:  # a request (not an upgrade): its cycle answers through the bounds below
            self._bind(self.cycle)

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()
            self._in_head = True

    def _count_parsed(self, size: int) -> None:
        self._head_parsed += size
        if self._head_parsed > self.head_limits.max_header_bytes:
            self._refuse_oversized_head()

    # -- answers sent before the request body arrived -------------------------------------------------------------

    def _bind(self, cycle: RequestResponseCycle) -> None:
        cycle.transport = _CycleTransport(self, cycle)  # type: ignore[assignment]
        send = cycle.send

        async def send_ending_unread_bodies(message) -> None:
            if message["type"] == "http.response.start" and not cycle.response_started and cycle.more_body:
                cycle.keep_alive = False  # uvicorn then writes Connection: close and ends the connection after it
            await send(message)

        cycle.send = send_ending_unread_bodies  # type: ignore[method-assign]  # run_asgi hands the app cycle.send

    def _close_after(self, cycle: RequestResponseCycle) -> None:
        """uvicorn closes the connection after an answer (or a failure): with the request body still arriving, the
        client is sent the end and given LINGER_S to read the answer and close, what it still sends dropped."""
        if self._refused and self._end_timer is not None:
            return  # lingering already
        if cycle.more_body and not cycle.disconnected and self._linger():
            return
        self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._refused:  # lingering: the end timer closes the connection, not the idle timeout
            self._unset_keepalive_if_required()

    # -- refusals -----------------------------------------------------------------------------------------------

    def _refuse_oversized_head(self) -> None:
        limit = self.head_limits.max_header_bytes
        self._refuse(431, f"the request line and headers are larger than {limit} bytes, the most this server "
                          "reads (MAX_HEADER_BYTES); send fewer or smaller headers (large cookies are the usual "
                          "cause)")

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._response_in_progress():  # a pipelined head waits for the current answer: not the client's fault
            self._head_timer = self.loop.call_later(self.head_limits.header_timeout_s, self._head_timed_out)
            return
        self._refuse(408, f"the request line and headers did not arrive within {self.head_limits.header_timeout_s:g}"
                          " s (HEADER_TIMEOUT_S); the connection is closed, send the request again")

    def _refuse(self, status: int, detail: str) -> None:
        self._refused = True
        self._cancel_head_timer()
        self._unset_keepalive_if_required()
        if self.transport.is_closing():
            return
        prefix = "%s:%d - " % self.client if self.client else ""
        logger.warning("%s%d: %s", prefix, status, detail.split(";")[0])
        if self._response_in_progress():  # an answer is being written: nothing can be said in between
            self.transport.close()
            return
        self.transport.write(error_response(status, detail, self.server_state.default_headers))
        if not self._linger():
            self.transport.close()

    def _linger(self) -> bool:
        """Half-close: the client reads what was written, then sees the end; its close closes ours (eof_received),
        or LINGER_S does. What it still sends is dropped. False where the transport cannot half-close (TLS)."""
        if self.transport.is_closing() or not self.transport.can_write_eof():
            return False
        self._refused = True
        self.transport.write_eof()
        self._cancel_end_timer()
        self._end_timer = self.loop.call_later(LINGER_S, self.transport.close)
        return True

    def _response_in_progress(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    # -- shutdown -----------------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        super().shutdown()  # idle connections close now; busy ones close after their response
        grace = self.config.timeout_graceful_shutdown
        if grace is not None and not self.transport.is_closing() and self._end_timer is None:
            self._end_timer = self.loop.call_later(grace, self._end_at_grace)

    def _end_at_grace(self) -> None:
        """The grace is over: uvicorn cancels what still runs; its connection is closed here, answered 503 when
        nothing had been answered yet."""
        self._end_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            grace = self.config.timeout_graceful_shutdown
            self.transport.write(error_response(
                503, f"the server is shutting down and this request did not finish within {grace:g} s "
                     "(SHUTDOWN_GRACE_S); send it again", self.server_state.default_headers))
        if cycle is not None:
            cycle.disconnected = True  # the app's receive() now says http.disconnect; its sends are dropped
            cycle.message_event.set()
        self.transport.close()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_end_timer(self) -> None:
        if self._end_timer is not None:
            self._end_timer.cancel()
            self._end_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_head_timer()
        self._cancel_end_timer()
