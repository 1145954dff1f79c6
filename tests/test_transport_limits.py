"""Issue 12, items 1, 3 and 4: attacks on the connection layer, replayed with raw sockets against a real server
started as `make serve` starts it (`python -m app`, tests/test_e2e.py's running_server). Each asserts the clean
outcome (431 / 408 / 503 / closed), the server healthy during and after (/healthz 200), and, where the attack is
about memory or disk, the server's RSS and its open temporary files (psutil, /proc/<pid>/fd).

The timeouts are made small through the environment so that the file runs in well under a minute.
"""
import json
import os
import select
import signal
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

from tests.test_api import digit_image, encode
from tests.test_e2e import running_server

pytestmark = pytest.mark.slow

HEADER_TIMEOUT_S = 2
KEEP_ALIVE_TIMEOUT_S = 1
BODY_TIMEOUT_S = 2
MIN_BODY_RATE_BYTES_S = 4096
MAX_CONCURRENT_UPLOADS = 3
ENV = {"DEVICE": "cpu", "JOB_WORKERS": "0", "TORCH_THREADS": "1", "HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
       "KEEP_ALIVE_TIMEOUT_S": str(KEEP_ALIVE_TIMEOUT_S), "BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
       "MIN_BODY_RATE_BYTES_S": str(MIN_BODY_RATE_BYTES_S), "MAX_CONCURRENT_UPLOADS": str(MAX_CONCURRENT_UPLOADS)}
LINGER_S = 2  # app/server/protocol.py: how long a connection ended after its answer waits for the client's close
MAX_HEADER_BYTES = 64 * 1024  # the default, left as it is
MiB = 1024 * 1024
BOUNDARY = "limits-test-boundary"


@dataclass
class Server:
    process: psutil.Process
    base_url: str
    port: int
    tmpdir: Path
    log_path: Path

    def rss(self) -> int:
        return self.process.memory_info().rss

    def temp_files(self) -> list[str]:
        """The server's open files under its TMPDIR: starlette's spooled uploads (unnamed, so only /proc sees
        them: '/tmp/x/#123 (deleted)')."""
        found = []
        folder = f"/proc/{self.process.pid}/fd"
        for fd in os.listdir(folder):
            try:
                target = os.readlink(f"{folder}/{fd}")
            except OSError:
                continue
            if target.startswith(str(self.tmpdir)):
                found.append(target)
        return found


def _serve(tiny_weights_dir: Path, tmp: Path, **env: str):
    tmpdir = tmp / "tmp"
    tmpdir.mkdir()
    return running_server(tiny_weights_dir, tmp, **{**ENV, "TMPDIR": str(tmpdir), **env}), tmpdir


@pytest.fixture(scope="module")
def server(tiny_weights_dir, tmp_path_factory):
    context, tmpdir = _serve(tiny_weights_dir, tmp_path_factory.mktemp("limits"))
    with context as (process, base_url, log_path):
        yield Server(psutil.Process(process.pid), base_url, int(base_url.rsplit(":", 1)[1]), tmpdir, log_path)


# --- raw HTTP -----------------------------------------------------------------------------------------------------

def connect(server: Server, timeout: float = 10) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def send_quietly(sock: socket.socket, data: bytes) -> bool:
    """False once the server has closed the connection (an attack it cut short)."""
    try:
        sock.sendall(data)
        return True
    except OSError:
        return False


def read_until_closed(sock: socket.socket, timeout: float = 10) -> bytes:
    """Everything the server sends until it closes the connection; b'' when it closed without a word."""
    sock.settimeout(timeout)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def status_of(raw: bytes) -> int | None:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else None


def headers_of(raw: bytes) -> dict[str, str]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in head)}


def detail_of(raw: bytes) -> str:
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])["detail"]


def assert_refused(raw: bytes, status: int, words: str) -> None:
    assert status_of(raw) == status, raw[:300]
    assert headers_of(raw)["connection"] == "close" and headers_of(raw)["content-type"] == "application/json"
    assert words in detail_of(raw), detail_of(raw)


def multipart_head(field: str, declared_file_bytes: int) -> tuple[bytes, int]:
    """The start of a multipart body with one file field, and the Content-Length of the whole body."""
    start = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"photo.png\"\r\n"
             "Content-Type: image/png\r\n\r\n").encode()
    end = f"\r\n--{BOUNDARY}--\r\n".encode()
    return start, len(start) + declared_file_bytes + len(end)


def start_upload(server: Server, path: str, field: str, declared: int, sent: int) -> socket.socket:
    """A multipart upload that declares `declared` file bytes and sends `sent` of them, then stalls."""
    start, length = multipart_head(field, declared)
    sock = connect(server)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}"
                 f"\r\nContent-Length: {length}\r\n\r\n".encode() + start + b"\0" * sent)
    return sock


def wait_for(condition, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


@contextmanager
def healthz_watch(server: Server):
    """/healthz polled on fresh connections while the block runs; every answer must be a 200."""
    answers: list[int | str] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                answers.append(httpx.get(f"{server.base_url}/healthz", timeout=5).status_code)
            except httpx.HTTPError as exc:
                answers.append(type(exc).__name__)
            stop.wait(0.2)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield answers
    finally:
        stop.set()
        thread.join(timeout=10)
    assert answers and all(answer == 200 for answer in answers), answers
    assert httpx.get(f"{server.base_url}/healthz", timeout=5).status_code == 200


# --- item 1: request heads ----------------------------------------------------------------------------------------

def test_a_head_over_the_limit_is_answered_431(server):
    with healthz_watch(server):
        sock = connect(server)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 10) + b"\r\n\r\n")
        raw = read_until_closed(sock)
    assert_refused(raw, 431, "MAX_HEADER_BYTES")
    assert f"larger than {MAX_HEADER_BYTES} bytes" in detail_of(raw)


def _flood(server: Server, pieces, outcome: list) -> None:
    sock = connect(server)
    for piece in pieces:
        if not send_quietly(sock, piece):
            break
    else:
        send_quietly(sock, b"\r\n")
    outcome.append(status_of(read_until_closed(sock)))
    sock.close()


def test_floods_of_headers_are_cut_short_without_memory_growth(server):
    """One huge header, many small ones, and a huge one again: 8 MiB or more each, on 3 connections at once."""
    request_line = b"GET /healthz HTTP/1.1\r\nHost: test\r\n"
    attacks = [
        [request_line] + [b"X-B: " + b"a" * (MiB - 8) + b"\r\n"] * 8,  # one 8 MiB header, in 1 MiB pieces
        [request_line] + [b"X-N: v\r\n" * 131072] * 8,  # 1,048,576 small headers
        [request_line, b"X-C: "] + [b"c" * MiB] * 9,  # a value that never ends
    ]
    httpx.get(f"{server.base_url}/healthz")
    before = server.rss()
    outcomes: list = []
    with healthz_watch(server):
        threads = [threading.Thread(target=_flood, args=(server, attack, outcomes)) for attack in attacks]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    grown = (server.rss() - before) / MiB
    assert len(outcomes) == 3 and all(outcome in (431, None) for outcome in outcomes), outcomes
    assert 431 in outcomes, outcomes
    assert grown < 50, f"RSS grew by {grown:.1f} MiB"


# --- item 4: slow and idle connections ----------------------------------------------------------------------------

def test_a_head_sent_byte_by_byte_gets_408(server):
    sock = connect(server)
    started = time.monotonic()
    raw = b""
    with healthz_watch(server):
        for byte in b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"s" * 100:
            if not send_quietly(sock, bytes([byte])):
                break
            if select.select([sock], [], [], 0.4)[0]:
                break
        raw = read_until_closed(sock)
    took = time.monotonic() - started
    assert_refused(raw, 408, "HEADER_TIMEOUT_S")
    assert HEADER_TIMEOUT_S - 0.5 < took < HEADER_TIMEOUT_S + 2, took


@pytest.mark.parametrize("sent", [b"GET /heal", b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Half: ab"],
                         ids=["half-request-line", "half-headers"])
def test_a_head_that_stops_gets_408(server, sent):
    sock = connect(server)
    sock.sendall(sent)
    started = time.monotonic()
    raw = read_until_closed(sock)
    assert_refused(raw, 408, "HEADER_TIMEOUT_S")
    assert time.monotonic() - started < HEADER_TIMEOUT_S + 2


def test_idle_connections_that_never_send_are_closed(server):
    socks = [connect(server) for _ in range(3)]
    started = time.monotonic()
    with healthz_watch(server):
        answers = [read_until_closed(sock) for sock in socks]
    assert answers == [b""] * 3  # closed without a word (nothing was asked)
    assert time.monotonic() - started < KEEP_ALIVE_TIMEOUT_S + 2


def test_a_connection_idle_after_a_response_is_closed(server):
    sock = connect(server)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
    raw = read_until_closed(sock)
    assert status_of(raw) == 200 and raw.endswith(b'{"status":"ok"}')


# --- item 4: bodies and uploads -----------------------------------------------------------------------------------

UPLOAD_ROUTES = [("/v1/style/jobs", "content"), ("/v1/digits/predict", "file")]


@pytest.mark.parametrize("path, field", UPLOAD_ROUTES, ids=["style-jobs", "digits-predict"])
def test_a_stalled_upload_gets_408_and_leaves_no_temporary_file(server, path, field):
    sock = start_upload(server, path, field, declared=9 * MiB, sent=2 * MiB)
    # Past 1 MiB starlette spools the file to disk: the attack really holds a temporary file...
    assert wait_for(lambda: server.temp_files(), 3), "the upload was never spooled to a temporary file"
    started = time.monotonic()
    with healthz_watch(server):
        raw = read_until_closed(sock)
    assert_refused(raw, 408, "BODY_TIMEOUT_S")
    assert time.monotonic() - started < BODY_TIMEOUT_S + 2
    # ...until the request ends.
    assert wait_for(lambda: not server.temp_files(), 3), server.temp_files()


def test_an_upload_whose_client_goes_away_leaves_no_temporary_file(server):
    sock = start_upload(server, "/v1/style/jobs", "content", declared=9 * MiB, sent=2 * MiB)
    assert wait_for(lambda: server.temp_files(), 3), "the upload was never spooled to a temporary file"
    sock.close()
    assert wait_for(lambda: not server.temp_files(), 3), server.temp_files()
    assert httpx.get(f"{server.base_url}/healthz").status_code == 200


def _chunked_upload(server: Server, size: int) -> bytes:
    """A multipart upload without Content-Length (chunked), `size` file bytes in 256 KiB chunks, then its end."""
    start, _ = multipart_head("file", size)
    sock = connect(server)
    sock.sendall(f"POST /v1/digits/predict HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; "
                 f"boundary={BOUNDARY}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
    pieces = [start] + [b"\0" * (256 * 1024)] * (size // (256 * 1024)) + [f"\r\n--{BOUNDARY}--\r\n".encode()]
    for piece in pieces:
        if not send_quietly(sock, b"%x\r\n%s\r\n" % (len(piece), piece)):
            break
    else:
        send_quietly(sock, b"0\r\n\r\n")
    return read_until_closed(sock)


@contextmanager
def trickling(socks: list[socket.socket], every_s: float = 0.3):
    """Keeps uploads in progress (1 KiB every `every_s`, well inside BODY_TIMEOUT_S) while the block runs."""
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(every_s):
            for sock in socks:
                send_quietly(sock, b"\0" * 1024)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def test_uploads_beyond_the_cap_get_503(server):
    stalled = [start_upload(server, "/v1/digits/predict", "file", declared=9 * MiB, sent=64 * 1024)
               for _ in range(MAX_CONCURRENT_UPLOADS)]
    with trickling(stalled), healthz_watch(server):
        time.sleep(1)  # each has been read from: it holds its slot
        started = time.monotonic()
        refused = read_until_closed(start_upload(server, "/v1/style/jobs", "content", declared=2 * MiB, sent=1024))
        refused_in = time.monotonic() - started
        streamed = _chunked_upload(server, 2 * MiB)
        small = httpx.post(f"{server.base_url}/v1/digits/predict",
                           files={"file": ("seven.png", encode(digit_image(7)), "image/png")})
    assert refused_in < 1.5, f"refused after {refused_in:.1f} s, not at once"
    for raw in (refused, streamed):
        assert_refused(raw, 503, "MAX_CONCURRENT_UPLOADS")
        assert headers_of(raw)["retry-after"].isdigit()
    assert small.status_code == 200, small.text  # small bodies never wait for a slot
    for sock in stalled:  # once they stop sending, the body timeout ends them and gives their slots back
        assert status_of(read_until_closed(sock)) == 408
    # The slots came back: a large upload is read again (and refused for what it is, not for the cap).
    accepted = _chunked_upload(server, 2 * MiB)
    assert status_of(accepted) in (400, 415, 422), accepted[:300]


# --- item 4: bodies trickled just inside the read timeout, and bodies still arriving after an early answer --------

def _trickle_until_answered(sock: socket.socket, every_s: float, for_s: float) -> bytes:
    """One byte every `every_s` (never long enough for BODY_TIMEOUT_S) until the server answers or `for_s` passes."""
    started = time.monotonic()
    while time.monotonic() - started < for_s:
        if not send_quietly(sock, b"\0"):
            break
        if select.select([sock], [], [], every_s)[0]:
            break
    return read_until_closed(sock)


@pytest.mark.parametrize("path, field", UPLOAD_ROUTES, ids=["style-jobs", "digits-predict"])
def test_a_body_trickled_inside_the_read_timeout_is_ended_by_the_minimum_rate(server, path, field):
    """1 byte every 0.5 s: BODY_TIMEOUT_S (2 s) never passes between two bytes, and POST /v1/style/jobs has no
    REQUEST_TIMEOUT_S; the minimum rate ends the body as its head start (BODY_TIMEOUT_S) runs out."""
    sock = start_upload(server, path, field, declared=64 * 1024, sent=0)
    started = time.monotonic()
    with healthz_watch(server):
        raw = _trickle_until_answered(sock, every_s=0.5, for_s=BODY_TIMEOUT_S + 8)
    took = time.monotonic() - started
    assert_refused(raw, 408, "MIN_BODY_RATE_BYTES_S")
    assert f"at least {MIN_BODY_RATE_BYTES_S} bytes/s" in detail_of(raw), detail_of(raw)
    assert BODY_TIMEOUT_S - 0.2 < took < BODY_TIMEOUT_S + 2, took


def test_a_slow_but_steady_upload_passes_the_minimum_rate(server):
    """A real photo after a pause at its start (inside the head start), then sent at 1.5 times the minimum rate
    until well past BODY_TIMEOUT_S, is classified as usual: the rate bounds tricklers, not slow connections."""
    photo = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (72, 72, 3), dtype=np.uint8)))
    start, length = multipart_head("file", len(photo))
    body = start + photo + f"\r\n--{BOUNDARY}--\r\n".encode()
    sock = connect(server)
    sock.sendall(f"POST /v1/objects/predict HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; "
                 f"boundary={BOUNDARY}\r\nContent-Length: {length}\r\n\r\n".encode())
    piece, rate = 512, MIN_BODY_RATE_BYTES_S * 1.5
    started = time.monotonic()
    time.sleep(BODY_TIMEOUT_S * 0.6)
    for offset in range(0, len(body), piece):
        assert send_quietly(sock, body[offset:offset + piece]), "the server cut a body sent above the rate"
        time.sleep(piece / rate)
    took = time.monotonic() - started
    raw = read_until_closed(sock)
    assert took > BODY_TIMEOUT_S + 1, f"the body took {took:.1f} s: not past the head start, nothing was shown"
    assert status_of(raw) == 200, raw[:400]
    assert json.loads(raw.split(b"\r\n\r\n", 1)[1])["label"]


def _head(method: str, path: str, declared: int, content_type: str = "application/octet-stream") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {declared}\r\n\r\n").encode()


def assert_ended_while_trickling(sock: socket.socket, status: int) -> bytes:
    """The client keeps trickling its body after the early answer: the answer must say Connection: close, the
    client must be sent the end of the connection at once, and the server must close its side within LINGER_S
    (a send is then refused) rather than read the trickle for good."""
    started = time.monotonic()
    raw, ended_at, closed_at = b"", None, None
    while time.monotonic() - started < LINGER_S + 6:
        if select.select([sock], [], [], 0.2)[0]:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
                closed_at = closed_at or time.monotonic() - started
            if not chunk and ended_at is None:
                ended_at = time.monotonic() - started
            raw += chunk
        if closed_at is None and not send_quietly(sock, b"x"):
            closed_at = time.monotonic() - started
        if closed_at is not None:
            break
    assert status_of(raw) == status, raw[:400]
    assert headers_of(raw)["connection"] == "close", raw[:400]
    assert ended_at is not None and ended_at < 1.5, f"the end of the answer came at {ended_at} s"
    assert closed_at is not None, f"the server was still reading the trickled body after {LINGER_S + 6} s"
    assert closed_at < LINGER_S + 2, closed_at
    return raw


EARLY_ANSWERS = [
    (415, _head("POST", "/v1/digits/predict", 1024 * 1024, "application/xml"), "unsupported content type"),
    (404, _head("POST", "/v1/no-such-route", 1024 * 1024), "not found: /v1/no-such-route"),
    (413, _head("POST", "/v1/style/jobs", 64 * MiB, "multipart/form-data; boundary=x"), "MAX_UPLOAD_BYTES"),
]


@pytest.mark.parametrize("status, head, words", EARLY_ANSWERS, ids=["415", "404", "413"])
def test_a_body_still_trickling_after_an_early_answer_does_not_hold_the_connection(server, status, head, words):
    sock = connect(server)
    sock.sendall(head + b"x" * 100)
    with healthz_watch(server):
        raw = assert_ended_while_trickling(sock, status)
    assert words in detail_of(raw), detail_of(raw)


def test_a_body_still_trickling_after_a_401_does_not_hold_the_connection(tiny_weights_dir, tmp_path):
    """With API_KEYS the 401 comes before any body byte is read (app/core/security.py)."""
    context, tmpdir = _serve(tiny_weights_dir, tmp_path, API_KEYS="alice:sekret")
    with context as (process, base_url, log_path):
        server = Server(psutil.Process(process.pid), base_url, int(base_url.rsplit(":", 1)[1]), tmpdir, log_path)
        start, length = multipart_head("content", 9 * MiB)
        sock = connect(server)
        sock.sendall(_head("POST", "/v1/style/jobs", length, f"multipart/form-data; boundary={BOUNDARY}") + start)
        with healthz_watch(server):
            raw = assert_ended_while_trickling(sock, 401)
        assert "missing API key" in detail_of(raw)
        assert not server.temp_files()


def test_an_early_answer_whose_body_has_arrived_keeps_the_connection(server):
    """The close is only for bodies still arriving: a refused request sent whole, with a second one pipelined
    behind it, gets both answers on the same connection."""
    sock = connect(server)
    sock.sendall(_head("POST", "/v1/digits/predict", 5, "application/xml") + b"<x/>\n"
                 + b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
    raw = read_until_closed(sock)  # the idle timeout closes it after the second answer
    first, _, second = raw.partition(b"HTTP/1.1 200")
    assert status_of(first) == 415 and "connection" not in headers_of(first), raw[:600]
    assert second.endswith(b'{"status":"ok"}'), raw[:600]


# --- item 3: SIGTERM ----------------------------------------------------------------------------------------------

SHUTDOWN_GRACE_S = 3


def test_sigterm_lets_in_flight_requests_finish_then_closes_the_rest(tiny_weights_dir, tmp_path):
    """A request that completes within SHUTDOWN_GRACE_S is answered; an upload still trickling then is answered
    503 and closed; new connections are refused at once; the app's shutdown runs after; the process exits."""
    context, tmpdir = _serve(tiny_weights_dir, tmp_path, SHUTDOWN_GRACE_S=str(SHUTDOWN_GRACE_S), BODY_TIMEOUT_S="30")
    with context as (process, base_url, log_path):
        server = Server(psutil.Process(process.pid), base_url, int(base_url.rsplit(":", 1)[1]), tmpdir, log_path)
        quick = connect(server)
        quick.sendall(b"POST /v1/sentiment/predict HTTP/1.1\r\nHost: test\r\nContent-Type: text/plain\r\n"
                      b"Content-Length: 9\r\n\r\ngood ")
        slow = start_upload(server, "/v1/digits/predict", "file", declared=9 * MiB, sent=64 * 1024)
        with trickling([slow]):
            time.sleep(0.3)
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
            quick.sendall(b"film")
            answered = read_until_closed(quick)
            cut = read_until_closed(slow, timeout=SHUTDOWN_GRACE_S + 5)
            cut_at = time.monotonic() - signalled
        returncode = process.wait(timeout=SHUTDOWN_GRACE_S + 10)
        exited_at = time.monotonic() - signalled
    assert status_of(answered) == 200 and headers_of(answered)["connection"] == "close", answered[:300]
    assert status_of(cut) in (503, None), cut[:300]
    if cut:
        assert_refused(cut, 503, "SHUTDOWN_GRACE_S")
    assert SHUTDOWN_GRACE_S - 0.5 < cut_at < SHUTDOWN_GRACE_S + 2, cut_at
    assert exited_at < SHUTDOWN_GRACE_S + 5, exited_at
    assert returncode in (0, -signal.SIGTERM)
    log = log_path.read_text()
    assert log.index("Waiting for connections to close") < log.index("Waiting for application shutdown")
    assert "Application shutdown complete" in log
