"""Soak test: minutes of mixed traffic against a real server, errors by status, latency per kind, memory drift.

    python -m bench.load                  # 3 minutes (plus a warm-up)
    python -m bench.load --duration 60    # shorter

Starts uvicorn on loopback over the committed weights (a temporary DATA_DIR) and drives it with
--concurrency (32) clients sending predicts of every kind (digits and objects as multipart and as JSON
base64, single and batch; sentiment single and batch), while --style-clients (2) submit tiny style jobs
(size 64, 5 to 20 steps), poll them to the end and cancel about a quarter of them.

Prints requests, errors by status, throughput and p50/p99 latency per kind, and the resident memory (RSS) of
the API process and of each child process (the style workers) after the warm-up and after the run.
Exit status 0 only when there were no errors (429 on a full style queue is intended and not one), at least
one style job succeeded and one was cancelled, and no process grew by more than --max-growth (10 %).
"""
import argparse
import asyncio
import base64
import io
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict

import httpx
import numpy as np
import psutil
from PIL import Image

from bench.servers import HELDOUT, Server, png_bytes

POLL_S = 0.5
STYLE_JOB_TIMEOUT_S = 180


def style_png(size=(96, 72)) -> bytes:
    image = Image.new("RGB", size, (200, 40, 40))
    for x in range(0, size[0], 8):
        for y in range(0, size[1], 8):
            if (x + y) // 8 % 2:
                image.paste((20, 20, 220), (x, y, x + 4, y + 4))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def predict_requests() -> dict[str, dict]:
    """kind -> httpx request arguments, from real held-out examples."""
    with np.load(HELDOUT / "mnist-test.npz") as mnist, np.load(HELDOUT / "cifar-test.npz") as cifar, \
            np.load(HELDOUT / "sst2-dev.npz") as sst:
        digits = [png_bytes(x) for x in mnist["x"][:8]]
        photos = [png_bytes(x) for x in cifar["x"][:8]]
        texts = [str(t) for t in sst["texts"][:8]]
    b64 = [base64.b64encode(d).decode() for d in digits]
    p64 = [base64.b64encode(p).decode() for p in photos]
    return {
        "digits_multipart": {"url": "/v1/digits/predict", "files": {"file": ("d.png", digits[0], "image/png")}},
        "digits_json": {"url": "/v1/digits/predict?top_k=5", "json": {"images": b64[:4]}},
        "objects_multipart": {"url": "/v1/objects/predict", "files": {"file": ("p.png", photos[0], "image/png")}},
        "objects_json": {"url": "/v1/objects/predict",
                         "json": {"image": "data:image/png;base64," + p64[1]}},
        "sentiment_single": {"url": "/v1/sentiment/predict", "json": {"text": texts[0]}},
        "sentiment_batch": {"url": "/v1/sentiment/predict", "json": {"texts": texts}},
    }


class Stats:
    def __init__(self):
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.statuses: dict[str, Counter] = defaultdict(Counter)
        self.errors: list[str] = []
        self.outcomes: Counter = Counter()
        self.recording = False

    def record(self, kind: str, status: int | str, seconds: float, ok: bool, detail: str = "") -> None:
        if not self.recording:
            if not ok:
                self.errors.append(f"(warm-up) {kind} {status} {detail[:160]}")
            return
        self.latencies[kind].append(seconds)
        self.statuses[kind][status] += 1
        if not ok:
            self.errors.append(f"{kind} {status} {detail[:160]}")


async def timed(http: httpx.AsyncClient, stats: Stats, kind: str, method: str, ok_statuses: tuple[int, ...],
                **kwargs) -> httpx.Response | None:
    start = time.perf_counter()
    try:
        response = await http.request(method, **kwargs)
    except httpx.HTTPError as exc:
        stats.record(kind, type(exc).__name__, time.perf_counter() - start, False, str(exc))
        return None
    elapsed = time.perf_counter() - start
    stats.record(kind, response.status_code, elapsed, response.status_code in ok_statuses, response.text)
    return response


async def predict_client(http, stats, requests, stop_at: float, seed: int) -> None:
    rng = random.Random(seed)
    kinds = list(requests)
    while time.monotonic() < stop_at:
        kind = rng.choice(kinds)
        await timed(http, stats, kind, "POST", (200,), **requests[kind])


async def style_client(http, stats, presets: list[str], stop_at: float, seed: int) -> None:
    rng = random.Random(seed)
    content, style = style_png(), style_png((48, 48))
    while time.monotonic() < stop_at:
        data = {"size": "64", "steps": str(rng.randint(5, 20))}
        files = [("content", ("c.png", content, "image/png"))]
        if presets and rng.random() < 0.5:
            data["style_preset"] = rng.choice(presets)
        else:
            files.append(("style", ("s.png", style, "image/png")))
        response = await timed(http, stats, "style_submit", "POST", (202, 429), url="/v1/style/jobs",
                               files=files, data=data)
        if response is None:
            await asyncio.sleep(1)
            continue
        if response.status_code == 429:
            stats.outcomes["refused_429"] += stats.recording
            await asyncio.sleep(min(2.0, float(response.headers.get("retry-after", "1"))))
            continue
        job_id = response.json()["id"]
        cancel = rng.random() < 0.25
        deadline = time.monotonic() + STYLE_JOB_TIMEOUT_S
        status = "queued"
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
            polled = await timed(http, stats, "style_poll", "GET", (200,), url=f"/v1/style/jobs/{job_id}")
            if polled is None:
                continue
            status = polled.json()["status"]
            if status in ("succeeded", "failed", "cancelled"):
                break
            if cancel:
                # 200 cancels a queued/running job, 204 deletes one that finished in the meantime
                deleted = await timed(http, stats, "style_cancel", "DELETE", (200, 204),
                                      url=f"/v1/style/jobs/{job_id}")
                status = "cancelled" if deleted is not None and deleted.status_code == 200 else "deleted"
                break
        else:
            stats.record("style_job", "timeout", STYLE_JOB_TIMEOUT_S, False, f"job {job_id} still {status}")
            continue
        if status == "succeeded":
            await timed(http, stats, "style_result", "GET", (200,), url=f"/v1/style/jobs/{job_id}/result")
        elif status == "failed":
            stats.record("style_job", "failed", 0.0, False, json.dumps(polled.json().get("error")))
        if stats.recording:
            stats.outcomes[status] += 1


def memory(pid: int) -> dict[str, int]:
    """RSS in bytes of the API process and of each of its children (named by pid and command)."""
    process = psutil.Process(pid)
    result = {"api": process.memory_info().rss}
    for child in process.children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
            role = "style-worker" if "spawn_main" in cmd else ("resource-tracker" if "resource_tracker" in cmd
                                                                else child.name())
            result[f"{role} (pid {child.pid})"] = child.memory_info().rss
        except psutil.Error:
            pass
    return result


async def sample_memory(pid: int, every: float) -> None:
    """The API's RSS during the run, so a steady climb (a leak) can be told from a one-off step."""
    while True:
        await asyncio.sleep(every)
        print(f"  api RSS {memory(pid)['api'] / 2**20:.1f} MiB", flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(port: int, pid: int, args) -> int:
    requests = predict_requests()
    stats = Stats()
    limits = httpx.Limits(max_connections=args.concurrency + args.style_clients + 4)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60) as http:
        presets = [p["name"] for p in (await http.get("/v1/style/presets")).json()["presets"]]

        async def phase(seconds: float) -> float:
            stop_at = time.monotonic() + seconds
            start = time.perf_counter()
            await asyncio.gather(
                *(predict_client(http, stats, requests, stop_at, seed) for seed in range(args.concurrency)),
                *(style_client(http, stats, presets, stop_at, 1000 + seed) for seed in range(args.style_clients)))
            return time.perf_counter() - start

        print(f"warm-up {args.warmup:.0f} s ...", flush=True)
        await phase(args.warmup)
        before = memory(pid)
        print(f"load {args.duration:.0f} s: {args.concurrency} predict clients, {args.style_clients} style clients",
              flush=True)
        stats.recording = True
        sampler = asyncio.create_task(sample_memory(pid, args.duration / 4))
        elapsed = await phase(args.duration)
        sampler.cancel()
        stats.recording = False
        after = memory(pid)

    failures = []
    print(f"\n{'kind':18s} {'requests':>8s} {'req/s':>7s} {'p50 ms':>8s} {'p99 ms':>8s}  statuses")
    total = 0
    for kind in sorted(stats.latencies):
        lat = stats.latencies[kind]
        total += len(lat)
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(stats.statuses[kind].items(), key=str))
        print(f"{kind:18s} {len(lat):8d} {len(lat) / elapsed:7.1f} {statistics.median(lat) * 1000:8.1f} "
              f"{percentile(lat, 0.99) * 1000:8.1f}  {statuses}")
    print(f"{'all':18s} {total:8d} {total / elapsed:7.1f}")
    print(f"style jobs: {dict(stats.outcomes)}")

    print(f"\n{'process':34s} {'RSS after warm-up':>18s} {'RSS after run':>14s} {'change':>8s}")
    for name in sorted(set(before) | set(after)):
        b, a = before.get(name), after.get(name)
        mib = (lambda v: f"{v / 2**20:.1f} MiB" if v is not None else "-")
        change = f"{(a - b) / b:+.1%}" if a and b else "n/a"
        print(f"{name:34s} {mib(b):>18s} {mib(a):>14s} {change:>8s}")
        if a and b and (a - b) / b > args.max_growth:
            failures.append(f"{name} grew {(a - b) / b:.1%} (limit {args.max_growth:.0%})")
        if b and not a and "style-worker" in name:
            failures.append(f"{name} disappeared during the run (a worker died?)")

    if stats.errors:
        failures.append(f"{len(stats.errors)} errors, e.g. {stats.errors[:5]}")
    if not stats.outcomes["succeeded"]:
        failures.append("no style job succeeded")
    if not stats.outcomes["cancelled"]:
        failures.append("no style job was cancelled")
    print("\nPASS" if not failures else "\nFAIL:\n  " + "\n  ".join(failures))
    return 0 if not failures else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=180, help="seconds of measured load (default 180)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds of warm-up (default duration/4, "
                        "30 to 60)")
    parser.add_argument("--concurrency", type=int, default=32, help="predict clients")
    parser.add_argument("--style-clients", type=int, default=2)
    parser.add_argument("--max-growth", type=float, default=0.10, help="largest RSS growth allowed (0.10 = 10 %%)")
    parser.add_argument("--device", default=os.environ.get("DEVICE", "auto"))
    args = parser.parse_args()
    if args.warmup is None:
        args.warmup = min(60.0, max(30.0, args.duration / 4))
    print(f"bench.load on {platform.node()} ({os.cpu_count()} CPUs), DEVICE={args.device}")
    with tempfile.TemporaryDirectory(prefix="bench-load-") as data_dir:
        env = {"DEVICE": args.device, "DATA_DIR": data_dir, "JOB_WORKERS": "1", "MAX_QUEUED_JOBS": "16",
               "LOG_LEVEL": "warning"}
        with Server(env=env) as server:
            code = asyncio.run(run(server.port, server.process.pid, args))
    sys.exit(code)


if __name__ == "__main__":
    main()
