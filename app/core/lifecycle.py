"""The server's shutdown signal, seen by long-lived responses (event streams) so that SIGTERM ends them.

uvicorn, on SIGTERM, stops accepting connections and then waits for every open request to finish before the
lifespan shutdown runs; an event stream never finishes by itself, so without this it would hold the server
forever. `install_signal_chain()` (called from the lifespan, which uvicorn runs inside its own signal capture)
puts a handler in front of uvicorn's that sets the event, then hands the signal on unchanged.
"""
from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import suppress

logger = logging.getLogger("app")
SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ShutdownSignal:
    """Set once the server begins to stop; `wait()` returns then. Safe to trigger from a signal handler."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()

    def trigger(self) -> None:
        if self._event.is_set():
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            self._event.set()
            return
        with suppress(RuntimeError):  # the loop stopped in between: nobody is waiting any more
            loop.call_soon_threadsafe(self._event.set)


def install_signal_chain(shutdown: ShutdownSignal) -> None:
    """Trigger `shutdown` on SIGINT/SIGTERM, then call the handler that was there (uvicorn's). Off the main
    thread (TestClient runs the lifespan in a worker thread) signals cannot be caught: nothing is installed."""
    shutdown.bind(asyncio.get_running_loop())
    for sig in SHUTDOWN_SIGNALS:
        try:
            previous = signal.getsignal(sig)
            signal.signal(sig, _chained(shutdown, previous))
        except ValueError:  # not the main thread
            return


def _chained(shutdown: ShutdownSignal, previous):
    def handler(sig, frame):
        shutdown.trigger()
        if callable(previous):
            previous(sig, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    return handler
