"""`python -m app`: uvicorn configured from the settings, the one way the server is started (`make serve`, the
Dockerfile, Compose and the tests that run a real server).

    python -m app [--host HOST] [--port PORT] [--root-path /prefix]   # every other setting: the environment

It serves app.main:app with the bounded httptools protocol (app/server/protocol.py: MAX_HEADER_BYTES,
HEADER_TIMEOUT_S), uvicorn's idle timeout KEEP_ALIVE_TIMEOUT_S and graceful shutdown SHUTDOWN_GRACE_S, trusted
proxy headers (FORWARDED_ALLOW_IPS, read by uvicorn) and no access log (the app writes its own, with request ids).
Plain uvicorn still works, with the same bounds when given the protocol and the matching flags:

    uvicorn app.main:app --http app.server.protocol:BoundedHttpToolsProtocol --timeout-keep-alive 5 \\
        --timeout-graceful-shutdown 10 --no-access-log

With `--http h11` instead, only the head size is bounded, and roughly (`--h11-max-incomplete-event-size 65536`:
a head still incomplete past that is answered 400 in plain text, one that arrives whole in one read passes); h11
has no head timeout and arms no idle timeout on a new connection.
"""
from __future__ import annotations

import argparse
import sys

import uvicorn

from app.core.config import Settings
from app.server.protocol import BoundedHttpToolsProtocol, HeadLimits

APP = "app.main:app"
STARTUP_FAILURE = 3  # uvicorn's own exit status when the app did not start


def build_config(settings: Settings, host: str | None = None, port: int | None = None,
                 root_path: str = "") -> uvicorn.Config:
    return uvicorn.Config(
        APP,
        host=host or settings.host,
        port=settings.port if port is None else port,
        root_path=root_path,
        http=BoundedHttpToolsProtocol.configured(HeadLimits.from_settings(settings)),
        timeout_keep_alive=settings.keep_alive_timeout_s,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        h11_max_incomplete_event_size=settings.max_header_bytes,  # used only if the protocol is swapped for h11
        proxy_headers=True,
        access_log=False,
        log_level=settings.log_level.lower(),
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app", description="Serve the model server (every other "
                                     "setting comes from the environment; see README.md, Settings).")
    parser.add_argument("--host", help="address to listen on (default: HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default: PORT, 8000)")
    parser.add_argument("--root-path", default="", help="the path prefix a reverse proxy serves the API under")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    server = uvicorn.Server(build_config(Settings(), args.host, args.port, args.root_path))
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    if not server.started:
        sys.exit(STARTUP_FAILURE)
