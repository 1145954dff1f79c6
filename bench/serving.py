"""Serving benchmark: this server against LitServe serving the same handlers, and against the in-process limit.

    python -m bench.serving                    # the full run (about five minutes on 2 cores)
    python -m bench.serving --rounds 1 --requests 300 --tasks digits

In one run and one process tree it starts, on loopback:
* this server, `python -m app`, as `make serve` starts it (settings from the environment);
* the peer: the project's own handlers (same decode, same predict, same backend) served by LitServe 0.2.19 with
  its dynamic batching (bench/litserve_app.py: max_batch_size 32, batch_timeout 2 ms, one worker);
* this server again with BATCH_MAX_SIZE=1, for the gain of dynamic batching on objects;
and measures, with the in-process limit first (decode + forward of the same held-out input, no HTTP: one item's
p50 and the best batch size's items/s, on the backend the server uses):
* `hey` (the load generator of the issue; `make hey` installs it) at concurrency 1 and 32 for digits,
  objects and sentiment, the servers alternating round by round so a busy neighbour slows all of them alike;
  the median round counts. While one server is measured the others are paused (SIGSTOP): LitServe's polling
  loops take about half a core when idle, which would otherwise slow whichever server is being measured.

It prints one table with throughput, p50 and p99 of both servers and their ratios, the overhead of the request path
(server p50 at concurrency 1 minus the in-process p50 of one item), objects at concurrency 32 against the in-process
limit, and the batching gain. Needs the `bench` extra (pip install -e '.[bench]').
"""
import argparse
import csv
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path


from bench.servers import Payload, Server, payloads

TASKS = ("digits", "objects", "sentiment")
PEER = [sys.executable, "-m", "bench.litserve_app"]
LIMIT_BATCH_SIZES = (1, 4, 8, 16, 32)


# ---------------------------------------------------------------- load generator
def hey_binary() -> str:
    found = shutil.which("hey")
    if not found:
        raise SystemExit("bench.serving drives the servers with hey: run `make hey` (Debian's hey package)")
    return found


@dataclass
class Round:
    throughput: float
    p50_ms: float
    p99_ms: float
    errors: int


def hey_round(hey: str, url: str, payload: Payload, body_file: Path, concurrency: int, requests: int) -> Round:
    completed = subprocess.run(
        [hey, "-n", str(requests), "-c", str(concurrency), "-m", "POST", "-T", payload.content_type,
         "-D", str(body_file), "-o", "csv", url + payload.path], capture_output=True, text=True, check=True)
    rows = list(csv.DictReader(io.StringIO(completed.stdout)))
    latencies = sorted(float(row["response-time"]) for row in rows)
    starts = [float(row["offset"]) for row in rows]
    ends = [float(row["offset"]) + float(row["response-time"]) for row in rows]
    errors = sum(row["status-code"] != "200" for row in rows)
    return Round(len(rows) / (max(ends) - min(starts)), statistics.median(latencies) * 1000,
                 latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000, errors)


@dataclass
class Result:
    task: str
    server: str
    concurrency: int
    rounds: int
    errors: int
    throughput: float
    p50_ms: float
    p99_ms: float


def measure_side_by_side(hey: str, servers: dict[str, Server], payload: Payload, concurrency: int, requests: int,
                         rounds: int) -> list[Result]:
    with tempfile.NamedTemporaryFile(suffix=".body") as body:
        body.write(payload.body)
        body.flush()
        for server in servers.values():  # warm-up: connections, caches, the batcher's threads
            hey_round(hey, server.url, payload, Path(body.name), concurrency, max(concurrency * 4, 50))
        measured: dict[str, list[Round]] = {name: [] for name in servers}
        for _ in range(rounds):
            for name, server in servers.items():
                with ExitStack() as others:
                    for other in servers.values():
                        if other is not server:
                            others.enter_context(other.paused())
                    measured[name].append(hey_round(hey, server.url, payload, Path(body.name), concurrency,
                                                    requests))
    return [Result(payload.task, name, concurrency, len(got), sum(r.errors for r in got),
                   round(statistics.median(r.throughput for r in got), 1),
                   round(statistics.median(r.p50_ms for r in got), 2),
                   round(statistics.median(r.p99_ms for r in got), 2)) for name, got in measured.items()]


# ---------------------------------------------------------------- in-process limit
@dataclass
class Limit:
    task: str
    model: str
    backend: str
    one_item_p50_ms: float
    best_batch: int
    items_per_s: float


def in_process_limits(tasks: list[str], payload_of: dict[str, Payload], seconds: float) -> list[Limit]:
    """Decode + forward of each task's default model, set up as the server sets it up, with no HTTP."""
    import torch

    from app.core.config import Settings
    from app.serving.loading import read_manifest
    from app.serving.registry import default_per_task, discover_handlers

    settings = Settings()
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
    entries = read_manifest(settings.weights_dir)
    classes = discover_handlers()
    handlers = {name: classes[entry["architecture"]](entry, settings.weights_dir, settings)
                for name, entry in entries.items()}
    limits = []
    for task, name in default_per_task(handlers).items():
        if task not in tasks:
            continue
        handler = handlers[name]
        handler.setup(torch.device("cpu"))
        raw = payload_of[task].raw
        one = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(one) < 50:
            started = time.perf_counter()
            handler.predict([handler.decode_request(raw)])
            one.append(time.perf_counter() - started)
        rates = {size: _items_per_s(handler, raw, size, seconds / 2) for size in LIMIT_BATCH_SIZES}
        best = max(rates, key=rates.get)
        limits.append(Limit(task, name, handler.inference["backend"], round(statistics.median(one) * 1000, 3),
                            best, round(rates[best], 1)))
    return limits


def _items_per_s(handler, raw, size: int, seconds: float) -> float:
    items, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or items < 3 * size:
        handler.predict([handler.decode_request(raw) for _ in range(size)])
        items += size
    return items / (time.perf_counter() - started)


# ---------------------------------------------------------------- report
def idle_cpu(servers: dict[str, Server], seconds: float = 2.0) -> dict[str, float]:
    """Each idle server tree's CPU use, in % of one core: a polling neighbour would skew the comparison."""
    trees = {name: server.tree() for name, server in servers.items()}
    before = {name: sum(sum(p.cpu_times()[:2]) for p in procs) for name, procs in trees.items()}
    time.sleep(seconds)
    return {name: round(100 * (sum(sum(p.cpu_times()[:2]) for p in procs) - before[name]) / seconds, 1)
            for name, procs in trees.items()}


def report(results: list[Result], limits: list[Limit]) -> str:
    by = {(r.server, r.task, r.concurrency): r for r in results}
    lines = ["| endpoint | concurrency | this server req/s | LitServe req/s | throughput ratio | this server p50 / p99 ms "
             "| LitServe p50 / p99 ms | p50 ratio |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r.server != "this":
            continue
        peer = by[("litserve", r.task, r.concurrency)]
        lines.append(f"| {r.task} | {r.concurrency} | {r.throughput:,.0f} | {peer.throughput:,.0f} | "
                     f"{r.throughput / peer.throughput:.2f}x | {r.p50_ms:.2f} / {r.p99_ms:.1f} | "
                     f"{peer.p50_ms:.2f} / {peer.p99_ms:.1f} | {r.p50_ms / peer.p50_ms:.2f}x |")
    lines += ["", "| endpoint | model (backend) | in-process p50, 1 item | request-path overhead at c=1 | "
                  "in-process limit (best batch) | this server at c=32 | share of the limit |",
              "|---|---|---|---|---|---|---|"]
    for limit in limits:
        single, loaded = by.get(("this", limit.task, 1)), by.get(("this", limit.task, 32))
        overhead = f"{single.p50_ms - limit.one_item_p50_ms:.2f} ms" if single else "-"
        share = f"{loaded.throughput / limit.items_per_s:.0%}" if loaded else "-"
        shown = f"{loaded.throughput:,.0f} req/s" if loaded else "-"
        lines.append(f"| {limit.task} | {limit.model} ({limit.backend}) | {limit.one_item_p50_ms:.2f} ms | {overhead} | "
                     f"{limit.items_per_s:,.0f} items/s (batch {limit.best_batch}) | {shown} | {share} |")
    for r in results:
        if r.server == "unbatched":
            batched = by[("this", r.task, r.concurrency)]
            lines.append(f"\n{r.task} at concurrency {r.concurrency}: dynamic batching on {batched.throughput:,.0f} "
                         f"req/s, BATCH_MAX_SIZE=1 {r.throughput:,.0f} req/s -> {batched.throughput / r.throughput:.2f}x")
    errors = [f"{r.server} {r.task} c={r.concurrency}: {r.errors}" for r in results if r.errors]
    if errors:
        lines.append("\nnon-200 answers: " + ", ".join(errors))
    return "\n".join(lines)


def start_servers(stack: ExitStack, data_dir: Path, batching_gain: bool) -> dict[str, Server]:
    servers = {"this": stack.enter_context(Server(env={"DATA_DIR": str(data_dir / "this")})),
               "litserve": stack.enter_context(Server(PEER, ready_path="/health", name="litserve"))}
    if batching_gain:
        servers["unbatched"] = stack.enter_context(Server(
            env={"DATA_DIR": str(data_dir / "unbatched"), "BATCH_MAX_SIZE": "1", "STYLE_JOBS_ENABLED": "false"},
            name="unbatched"))
    return servers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="requests per round at concurrency > 1 "
                        "(a quarter of it at concurrency 1)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server and measurement; the median counts")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--limit-s", type=float, default=2.0, help="seconds per in-process measurement")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    hey = hey_binary()
    payload_of = payloads()
    print(f"bench.serving on {platform.node()} ({os.cpu_count()} CPUs), INFERENCE_BACKEND="
          f"{os.environ.get('INFERENCE_BACKEND', 'auto')}, load generator {hey}", flush=True)

    limits = in_process_limits(args.tasks, payload_of, args.limit_s)
    for limit in limits:
        print(f"  in-process {limit.task:10s} {limit.model} ({limit.backend}): 1 item p50 {limit.one_item_p50_ms:.2f} ms,"
              f" {limit.items_per_s:,.0f} items/s at batch {limit.best_batch}", flush=True)

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as data_dir, ExitStack() as stack:
        servers = start_servers(stack, Path(data_dir), batching_gain="objects" in args.tasks
                                and any(c > 1 for c in args.concurrency))
        print(f"  idle CPU, % of a core: {idle_cpu(servers)}", flush=True)
        for task in args.tasks:
            for concurrency in args.concurrency:
                compared = {name: servers[name] for name in ("this", "litserve")}
                if task == "objects" and concurrency > 1:
                    compared["unbatched"] = servers["unbatched"]
                requests = args.requests if concurrency > 1 else max(50, args.requests // 4)
                for result in measure_side_by_side(hey, compared, payload_of[task], concurrency, requests, args.rounds):
                    print(f"  {result.server:10s} {task:10s} c={concurrency:<3d} {result.throughput:8.1f} req/s  "
                          f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms", flush=True)
                    results.append(result)

    print("\n" + report(results, limits))
    if args.out:
        args.out.write_text(json.dumps({"results": [asdict(r) for r in results],
                                        "limits": [asdict(limit) for limit in limits]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
