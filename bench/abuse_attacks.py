"""The attacks of issue 12, each a function of the running server that returns (what happened, as expected?).
Registered in order with @attack; bench/abuse.py runs them and measures RSS and /healthz around each.

The raw-socket and request helpers are the regression tests' own (tests/test_transport_limits.py,
tests/test_hardening.py, tests/test_style_*.py), imported so the bench replays exactly what the tests replay.
"""
import re
import select
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import httpx

from app.core.config import Settings
from tests.test_hardening import KEYS, big_flat_png, png, submit as submit_small
from tests.test_style_api import submit as submit_job, wait_running
from tests.test_style_events import events_of, server_cpu_s
from tests.test_transport_limits import (BOUNDARY, Server, _flood, connect, headers_of, multipart_head,
                                         read_until_closed, send_quietly, status_of, trickling, wait_for)

MiB = 2**20
LONG_STEPS = 2000  # a 64 px job that keeps the worker busy until it is cancelled


@dataclass
class Target:
    server: Server  # tests/test_transport_limits.py's view of the process: rss(), temp_files(), port
    popen: subprocess.Popen
    settings: Settings  # what the server runs with
    quick: bool

    def http(self, who: str | None = "alice") -> httpx.Client:
        headers = {"X-API-Key": KEYS[who]} if who else {}
        return httpx.Client(base_url=self.server.base_url, timeout=60, headers=headers)


@dataclass
class Attack:
    name: str
    expected: str
    run: Callable[[Target], tuple[str, bool]]
    max_growth_mib: float | None = None  # the server's RSS may grow by at most this much (attacks on memory)
    judge_health: bool = True  # /healthz must answer 200 all along (not while the server is told to stop)


ATTACKS: list[Attack] = []


def attack(name: str, expected: str, **options):
    def register(run):
        ATTACKS.append(Attack(name, expected, run, **options))
        return run
    return register


def raw_request(t: Target, head: str, body: bytes = b"", who: str = "alice") -> socket.socket:
    sock = connect(t.server)
    sock.sendall(f"{head}\r\nHost: bench\r\nX-API-Key: {KEYS[who]}\r\n".encode() + body)
    return sock


def start_upload(t: Target, path: str, field: str, declared: int, sent: int) -> socket.socket:
    """tests/test_transport_limits.py's start_upload with an API key (without one it is 401 before its body)."""
    start, length = multipart_head(field, declared)
    sock = raw_request(t, f"POST {path} HTTP/1.1", f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                       f"Content-Length: {length}\r\n\r\n".encode() + start)
    send_quietly(sock, b"\0" * sent)
    return sock


def joined(statuses) -> str:
    """'431, 431, 431' for a few answers; '84 x 503, 16 x 408' for many."""
    statuses = [str(status) for status in statuses]
    if len(statuses) <= 5:
        return ", ".join(statuses)
    return ", ".join(f"{statuses.count(s)} x {s}" for s in sorted(set(statuses), key=statuses.index))


# --------------------------------------------------------------------------------------------- connections

@attack("1 GiB of headers over 3 connections", "431 or closed early; RSS flat", max_growth_mib=50)
def header_flood(t: Target):
    mib = 8 if t.quick else 342  # per connection
    line = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n"
    floods = [[line] + [b"X-B: " + b"a" * (MiB - 8) + b"\r\n"] * mib,  # 1 MiB headers
              [line] + [b"X-N: v\r\n" * 131072] * mib,  # a million small headers per MiB
              [line, b"X-C: "] + [b"c" * MiB] * mib]  # one value that never ends
    outcomes: list = []
    threads = [threading.Thread(target=_flood, args=(t.server, pieces, outcomes)) for pieces in floods]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    said = [str(o) if o else "closed" for o in outcomes]
    return (f"3 x {mib} MiB offered: {joined(said)}",
            len(outcomes) == 3 and set(outcomes) <= {431, None} and 431 in outcomes)


@attack("slowloris head (1 byte / 0.4 s)", "408 at HEADER_TIMEOUT_S")
def slowloris(t: Target):
    sock, started = connect(t.server), time.monotonic()
    for byte in b"GET /healthz HTTP/1.1\r\nHost: bench\r\nX-Slow: " + b"s" * 100:
        if not send_quietly(sock, bytes([byte])) or select.select([sock], [], [], 0.4)[0]:
            break
    status, took = status_of(read_until_closed(sock)), time.monotonic() - started
    return f"{status} after {took:.1f} s", status == 408 and took < t.settings.header_timeout_s + 2


@attack("3 idle connections", "closed at KEEP_ALIVE_TIMEOUT_S")
def idle(t: Target):
    socks, started = [connect(t.server) for _ in range(3)], time.monotonic()
    answers = [read_until_closed(sock) for sock in socks]
    took = time.monotonic() - started
    return (f"{sum(a == b'' for a in answers)} of 3 closed without a word after {took:.1f} s",
            answers == [b""] * 3 and took < t.settings.keep_alive_timeout_s + 2)


@attack("slow body: 3 uploads to /v1/style/jobs stalled after 2 MiB", "408 at BODY_TIMEOUT_S; temp files gone")
def stalled_body(t: Target):
    socks = [start_upload(t, "/v1/style/jobs", "content", declared=9 * MiB, sent=2 * MiB) for _ in range(3)]
    held = wait_for(lambda: len(t.server.temp_files()) >= 3, 5)
    started = time.monotonic()
    statuses = [status_of(read_until_closed(sock)) for sock in socks]
    took = time.monotonic() - started
    released = wait_for(lambda: not t.server.temp_files(), 5)
    return (f"{joined(statuses)} after {took:.1f} s; temp files {'3 -> 0' if held and released else 'leaked'}",
            statuses == [408] * 3 and held and released and took < t.settings.body_timeout_s + 2)


@attack("slow body: 1 byte / 0.5 s to /v1/style/jobs", "408 within BODY_TIMEOUT_S + 5 s")
def trickled_body(t: Target):
    sock, started = start_upload(t, "/v1/style/jobs", "content", declared=64 * 1024, sent=0), time.monotonic()
    limit = t.settings.body_timeout_s + 5
    while time.monotonic() - started < limit + 5:
        if not send_quietly(sock, b"\0") or select.select([sock], [], [], 0.5)[0]:
            break
    status, took = status_of(read_until_closed(sock)), time.monotonic() - started
    return f"{status or 'still open'} after {took:.1f} s", status == 408 and took < limit


@attack("100 stalled 9 MiB uploads", "MAX_CONCURRENT_UPLOADS held, the rest 503; temp files gone",
        max_growth_mib=100)
def stalled_uploads(t: Target):
    count, cap = (24 if t.quick else 100), t.settings.max_concurrent_uploads
    socks: list[socket.socket] = []
    with trickling(socks):  # the ones holding a slot stay in progress while the rest arrive
        for _ in range(count):
            # past 1 MiB an upload is spooled to a temporary file
            sock = start_upload(t, "/v1/digits/predict", "file", declared=9 * MiB, sent=2 * MiB)
            socks.append(sock)
        time.sleep(0.5)
        during = len(t.server.temp_files())
    answers = [read_until_closed(sock) for sock in socks]  # trickle stopped: BODY_TIMEOUT_S ends the holders
    statuses = [status_of(raw) for raw in answers]
    refused = [raw for raw in answers if status_of(raw) == 503]
    retry = all(headers_of(raw).get("retry-after", "").isdigit() for raw in refused)
    released = wait_for(lambda: not t.server.temp_files(), 5)
    after = len(t.server.temp_files())
    return (f"{count} uploads: {statuses.count(503)} x 503 (Retry-After), {statuses.count(408)} x 408 (held, cap {cap}); "
            f"temp files {during} -> {after}",
            set(statuses) <= {408, 503} and statuses.count(503) >= count - cap and retry and during <= cap
            and released)


# --------------------------------------------------------------------------------------------- input

@attack("style_weight=1e39 / tv_weight=1e39 / style_weight=nan", "422 naming the field")
def numbers(t: Target):
    with t.http() as http:
        answers = [(name, submit_small(http, **{name: value}))
                   for name, value in (("style_weight", "1e39"), ("tv_weight", "1e39"), ("style_weight", "nan"))]
    return (joined(r.status_code for _, r in answers),
            all(r.status_code == 422 and name in r.json()["detail"] for name, r in answers))


@attack("charset=punycode / charset=idna", "415")
def charsets(t: Target):
    with t.http() as http:
        statuses = [http.post("/v1/sentiment/predict", content=body,
                              headers={"Content-Type": f"text/plain; charset={charset}"}).status_code
                    for charset, body in (("punycode", b"good film"), ("idna", b"xn--good film"))]
    return joined(statuses), statuses == [415, 415]


def _count(metrics: str, route: str, status: int) -> float:
    found = re.search(rf'http_requests_total\{{method="POST",route="{route}",status="{status}"\}} ([0-9.e+]+)',
                      metrics)
    return float(found.group(1)) if found else 0.0


@attack("5 clients hang up mid-body", "499 in /metrics, no traceback")
def hang_ups(t: Target):
    metrics = lambda: httpx.get(f"{t.server.base_url}/metrics").text  # noqa: E731
    before, tracebacks = metrics(), t.server.log_path.read_text().count("Traceback")
    for _ in range(5):
        sock = raw_request(t, "POST /v1/style/jobs HTTP/1.1", b"Content-Type: multipart/form-data; boundary=b\r\n"
                           b"Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"content\"; "
                           b"filename=\"a.png\"\r\n\r\n" + b"x" * 2000)
        time.sleep(0.2)
        sock.close()
    counted = lambda status: _count(metrics(), "/v1/style/jobs", status) - _count(before, "/v1/style/jobs", status)  # noqa: E731
    wait_for(lambda: counted(499) >= 5, 10, 0.2)
    new_tracebacks = t.server.log_path.read_text().count("Traceback") - tracebacks
    n499, n500 = counted(499), counted(500)
    return (f"+{n499:.0f} x 499, +{n500:.0f} x 500, {new_tracebacks} tracebacks",
            n499 == 5 and n500 == 0 and new_tracebacks == 0)


@attack("10000x10 content image", "422 at submit")
def strip(t: Target):
    with t.http() as http:
        response = http.post("/v1/style/jobs", files={"content": ("strip.png", png(10000, 10), "image/png")},
                             data={"style_preset": "starry_night", "size": "256", "steps": "5"})
    return str(response.status_code), response.status_code == 422 and "10000x10 px" in response.json()["detail"]


@attack("invalid JSON", "400")
def invalid_json(t: Target):
    with t.http() as http:
        response = http.post("/v1/digits/predict", content=b'{"image": ', headers={"Content-Type":
                                                                                 "application/json"})
    return str(response.status_code), response.status_code == 400


@attack("PUT /v1/style/jobs/x", "405, Allow: DELETE, GET")
def wrong_method(t: Target):
    with t.http() as http:
        response = http.put("/v1/style/jobs/x")
    allow = response.headers.get("allow", "")
    return (f"{response.status_code}, Allow: {allow}",
            response.status_code == 405 and {"GET", "DELETE"} <= set(allow.replace(" ", "").split(",")))


@attack("no key; 401 in /openapi.json", "401, declared on every /v1 operation")
def unauthenticated(t: Target):
    schema = httpx.get(f"{t.server.base_url}/openapi.json").json()
    operations = [op for path, ops in schema["paths"].items() if path.startswith("/v1") for op in ops.values()]
    declared = sum("401" in op["responses"] for op in operations)
    with t.http(None) as anonymous:
        status = anonymous.post("/v1/sentiment/predict", json={"text": "x"}).status_code
    return f"{status}; declared on {declared} of {len(operations)}", status == 401 and declared == len(operations)


@attack("64 x 5000-char sentiment batch", "413 (MAX_REQUEST_CHARS)")
def long_batch(t: Target):
    with t.http() as http:
        response = http.post("/v1/sentiment/predict", json={"texts": [("a good film " * 417)[:5000]] * 64})
    return str(response.status_code), response.status_code == 413 and "MAX_REQUEST_CHARS" in response.text


@attack("16 concurrent 6000x6000 uploads", "answered; RSS back within 400 MiB", max_growth_mib=400)
def big_images(t: Target):
    side, count = (3000, 4) if t.quick else (6000, 16)
    images = [big_flat_png(side, seed) for seed in range(2 if t.quick else 4)]
    with t.http() as http, ThreadPoolExecutor(count) as pool:
        def send(i: int) -> int:
            task = "objects" if i % 2 else "digits"
            return http.post(f"/v1/{task}/predict", files={"file": ("big.png", images[i % len(images)],
                                                                    "image/png")}, timeout=180).status_code
        statuses = list(pool.map(send, range(count)))
    time.sleep(0.5)
    return f"{count} at {side}x{side}: {joined(sorted(statuses))}", set(statuses) <= {200, 400}


# --------------------------------------------------------------------------------------------- jobs and owners

def lists(http: httpx.Client, job_id: str) -> bool:
    return job_id in [job["id"] for job in http.get("/v1/style/jobs", params={"limit": 100}).json()["jobs"]]


@attack("bob reads alice's job: list/get/result/preview/events/delete", "404 each; not listed")
def other_owner(t: Target):
    with t.http("alice") as alice, t.http("bob") as bob:
        job_id = submit_small(alice).json()["id"]
        statuses = [bob.request(method, f"/v1/style/jobs/{job_id}{path}").status_code
                    for method, path in (("GET", ""), ("GET", "/result"), ("GET", "/preview"), ("GET", "/events"),
                                         ("DELETE", ""))]
        listed = lists(bob, job_id)
        alice.delete(f"/v1/style/jobs/{job_id}")
    return f"{joined(statuses)}; listed to bob: {listed}", statuses == [404] * 5 and not listed


@attack("admin key lists and reads alice's job", "listed, owner alice")
def admin_sees_all(t: Target):
    with t.http("alice") as alice, t.http("ops") as ops:
        job_id = submit_small(alice).json()["id"]
        listed = lists(ops, job_id)
        owner = ops.get(f"/v1/style/jobs/{job_id}").json().get("owner")
        alice.delete(f"/v1/style/jobs/{job_id}")
    return f"listed: {listed}, owner: {owner}", listed and owner == "alice"


@attack("bob fills the queue", "429 + Retry-After past MAX_QUEUED_JOBS_PER_OWNER; alice still 202")
def owner_queue_cap(t: Target):
    cap, mine = t.settings.max_queued_jobs_per_owner, []
    with t.http("bob") as bob, t.http("alice") as alice:
        for _ in range(cap + 2):  # the worker may take one of them: it is then running, not queued
            response = submit_small(bob, steps=str(LONG_STEPS))
            if response.status_code != 202:
                break
            mine.append(response.json()["id"])
        other = submit_small(alice)
        for job_id in mine:
            bob.delete(f"/v1/style/jobs/{job_id}")
        if other.status_code == 202:
            alice.delete(f"/v1/style/jobs/{other.json()['id']}")
    retry = response.headers.get("retry-after", "")
    return (f"{len(mine)} x 202, then {response.status_code} (Retry-After: {retry}); alice {other.status_code}",
            response.status_code == 429 and retry.isdigit() and "MAX_QUEUED_JOBS_PER_OWNER" in response.text
            and other.status_code == 202)


@attack("1024 px x 2000 steps", "422 (MAX_JOB_PIXEL_STEPS)")
def costly_job(t: Target):
    with t.http() as http:
        response = submit_small(http, size="1024", steps="2000")
    return str(response.status_code), response.status_code == 422 and "MAX_JOB_PIXEL_STEPS" in response.text


@attack("200 event streams on one running job", "STREAMS_PER_JOB open, the rest 429; server CPU")
def listeners(t: Target):
    count, window = (40, 1.5) if t.quick else (200, 3.0)
    with t.http() as http:
        job_id = submit_job(http, steps=LONG_STEPS)["id"]
        wait_running(http, job_id)
        socks = [raw_request(t, f"GET /v1/style/jobs/{job_id}/events HTTP/1.1", b"\r\n") for _ in range(count)]
        statuses = [status_of(sock.recv(64)) for sock in socks]
        cpu = server_cpu_s(t.server.process, window)
        for sock in socks:
            sock.close()
        http.delete(f"/v1/style/jobs/{job_id}")
    cap = t.settings.streams_per_job
    return (f"{statuses.count(200)} open, {statuses.count(429)} x 429; server CPU {100 * cpu / window:.0f} % "
            f"of a core over {window:.0f} s",
            statuses.count(200) == cap and statuses.count(429) == count - cap)


@attack("SIGTERM with an event stream open", "event: shutdown; exit within SHUTDOWN_GRACE_S; job re-queued",
        judge_health=False)
def sigterm(t: Target):
    with t.http() as http:
        job_id = submit_job(http, steps=LONG_STEPS)["id"]
        wait_running(http, job_id)
        seen, events = threading.Event(), []

        def listen() -> None:
            with http.stream("GET", f"/v1/style/jobs/{job_id}/events") as response:
                events.extend(events_of(response, seen=seen))

        reader = threading.Thread(target=listen, daemon=True)
        reader.start()
        seen.wait(20)
        logged = len(t.server.log_path.read_text(errors="replace"))
        signalled = time.monotonic()
        t.popen.send_signal(signal.SIGTERM)
        code = t.popen.wait(timeout=t.settings.shutdown_grace_s + 30)
        took = time.monotonic() - signalled
        reader.join(timeout=5)
    last = events[-1][0] if events else None
    log = t.server.log_path.read_text(errors="replace")[logged:]
    requeued = f"job {job_id} handed back to the queue" in log  # the worker's word (app/style/runner.py)
    clean = "Traceback" not in log
    return (f"last event: {last}; exit {code} after {took:.1f} s; job {'re-queued' if requeued else 'not re-queued'}"
            f"; {'no traceback' if clean else 'traceback in the log'}",
            last == "shutdown" and code in (0, -signal.SIGTERM) and took <= t.settings.shutdown_grace_s
            and requeued and clean)
