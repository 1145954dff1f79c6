"""Hostile clients (issue 12): every attack of the issue in one go against a real server, as a Markdown table.

    python -m bench.abuse            # the full run (about 2 minutes on 2 cores)
    python -m bench.abuse --quick    # smaller floods, fewer uploads and listeners (under a minute)
    python -m bench.abuse --only header,sigterm    # the attacks whose name contains one of the words

Starts the server exactly as `make serve` does (`python -m app --host 127.0.0.1 --port N`, tests/test_e2e.py's
start_server) over the committed weights (or --weights-dir), on the CPU, with one style worker, named API keys
(alice, bob, ops:admin: the ownership attacks need owners) and small timeouts so that the run stays short. Then
runs each attack of bench/abuse_attacks.py in turn (SIGTERM last) and prints, per attack: what was expected, what
happened (status codes, closed connections, counts), the server's RSS before and after (psutil, MiB), /healthz
polled from a thread while it ran (answers 200 / other), and whether the outcome is the clean one.
Exit status 1 when any attack is not answered as expected (or /healthz failed during it), 0 otherwise.

Times are printed, never judged, except where a timeout setting is the expectation (408 at HEADER_TIMEOUT_S...).
Run from the repository root: the attacks reuse the regression tests' helpers (the `tests` folder).
"""
import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import httpx
import psutil

from app.core.config import PROJECT_ROOT, Settings
from bench.abuse_attacks import ATTACKS, Attack, Target
from tests.test_e2e import start_server, stop, wait_until_ready
from tests.test_hardening import API_KEYS
from tests.test_transport_limits import Server

MiB = 2**20
READY_TIMEOUT_S = 120
# The settings the bench changes; every other limit is the server's default (read back through Settings).
ENV = {"DEVICE": "cpu", "JOB_WORKERS": "1", "TORCH_THREADS": "1", "API_KEYS": API_KEYS, "HEADER_TIMEOUT_S": "2",
       "KEEP_ALIVE_TIMEOUT_S": "1", "BODY_TIMEOUT_S": "2", "SHUTDOWN_GRACE_S": "5", "LOG_LEVEL": "info"}


class HealthPoll:
    """/healthz on a fresh connection every `every_s` from a thread while the block runs: 200s and the rest."""

    def __init__(self, base_url: str, every_s: float = 0.2):
        self.base_url, self.every_s = base_url, every_s
        self.ok, self.failed = 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                status = httpx.get(f"{self.base_url}/healthz", timeout=5).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            if status == 200:
                self.ok += 1
            else:
                self.failed.append(status)
            self._stop.wait(self.every_s)

    def __enter__(self) -> "HealthPoll":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def __str__(self) -> str:
        kinds = sorted({str(f) for f in self.failed})
        return f"{self.ok} / {len(self.failed)}" + (f" ({', '.join(kinds)})" if kinds else "")


def rss_mib(target: Target) -> float | None:
    try:
        return target.server.rss() / MiB
    except psutil.Error:
        return None  # the process has exited (SIGTERM)


def run_attack(target: Target, attack: Attack) -> dict:
    before = rss_mib(target)
    started = time.monotonic()
    with HealthPoll(target.server.base_url) as health:
        try:
            outcome, ok = attack.run(target)
        except Exception as exc:  # an attack that breaks is a failed expectation, reported in its row
            outcome, ok = f"error: {type(exc).__name__}: {str(exc)[:200]}", False
    after = rss_mib(target)
    grown = None if before is None or after is None else after - before
    if attack.max_growth_mib is not None and (grown is None or grown > attack.max_growth_mib):
        ok = False
    if attack.judge_health and (health.failed or not health.ok):
        ok = False
    return {"attack": attack, "outcome": outcome, "ok": ok, "before": before, "after": after, "health": health,
            "seconds": time.monotonic() - started}


def fmt_rss(value: float | None) -> str:
    return "exited" if value is None else f"{value:.0f}"


def table(rows: list[dict]) -> str:
    lines = ["| attack | expected | outcome | RSS before → after (MiB) | /healthz during (200 / other) | |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        attack = row["attack"]
        health = str(row["health"]) if attack.judge_health else f"{row['health']} (stopping)"
        lines.append(f"| {attack.name} | {attack.expected} | {row['outcome']} | {fmt_rss(row['before'])} → "
                     f"{fmt_rss(row['after'])} | {health} | {'pass' if row['ok'] else '**FAIL**'} |")
    return "\n".join(lines)


def wait_style_ready(base_url: str) -> None:
    """The style worker has loaded VGG-19 (jobs start at once: the listener and SIGTERM attacks need a running job)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if httpx.get(f"{base_url}/readyz", timeout=5).json().get("style") == "ready":
            return
        time.sleep(0.2)
    raise RuntimeError(f"style jobs not ready after {READY_TIMEOUT_S} s")


def shown(path: Path) -> str:
    resolved = path.resolve()
    return f"{resolved.relative_to(PROJECT_ROOT)}/" if resolved.is_relative_to(PROJECT_ROOT) else str(resolved)


def chosen(only: str | None) -> list[Attack]:
    if not only:
        return list(ATTACKS)
    words = [word.strip().lower() for word in only.split(",") if word.strip()]
    return [a for a in ATTACKS if any(word in a.name.lower() or word in a.run.__name__ for word in words)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller attacks (the test runs this)")
    parser.add_argument("--weights-dir", type=Path, default=PROJECT_ROOT / "weights")
    parser.add_argument("--only", help="comma-separated words: run the attacks whose name contains one")
    args = parser.parse_args(argv)
    attacks = chosen(args.only)
    settings = Settings(**{name.lower(): value for name, value in ENV.items()})
    with tempfile.TemporaryDirectory(prefix="abuse-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "tmp").mkdir()
        log_path = tmp_path / "server.log"
        started = time.monotonic()
        process, base_url = start_server(args.weights_dir, tmp_path / "data", log_path,
                                         **ENV, TMPDIR=str(tmp_path / "tmp"))
        try:
            wait_until_ready(process, base_url, log_path)
            wait_style_ready(base_url)
            server = Server(psutil.Process(process.pid), base_url, int(base_url.rsplit(":", 1)[1]),
                            tmp_path / "tmp", log_path)
            target = Target(server, process, settings, args.quick)
            print(f"server ready in {time.monotonic() - started:.1f} s (pid {process.pid}, {base_url})",
                  file=sys.stderr)
            rows = []
            for attack in attacks:
                rows.append(run_attack(target, attack))
                row = rows[-1]
                print(f"{attack.name}: {row['outcome']} ({row['seconds']:.1f} s, "
                      f"{'pass' if row['ok'] else 'FAIL'})", file=sys.stderr)
        finally:
            stop(process)
        failed = [row for row in rows if not row["ok"]]
        limits = ", ".join(f"{name}={getattr(settings, name.lower())}" for name in (
            "MAX_HEADER_BYTES", "HEADER_TIMEOUT_S", "KEEP_ALIVE_TIMEOUT_S", "BODY_TIMEOUT_S",
            "MAX_CONCURRENT_UPLOADS", "SHUTDOWN_GRACE_S", "STREAMS_PER_JOB", "MAX_EVENT_STREAMS",
            "MAX_QUEUED_JOBS_PER_OWNER", "MAX_JOB_PIXEL_STEPS", "MAX_REQUEST_CHARS"))
        print(f"`python -m bench.abuse{' --quick' if args.quick else ''}`, {date.today().isoformat()}, "
              f"{platform.machine()} {os.cpu_count()} cores, weights {shown(args.weights_dir)}, {limits}; "
              f"{len(rows) - len(failed)} of {len(rows)} attacks answered as expected, "
              f"{time.monotonic() - started:.0f} s in all\n")
        print(table(rows))
        if failed:
            print(f"\n--- server log (tail) ---\n{log_path.read_text(errors='replace')[-4000:]}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
