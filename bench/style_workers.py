"""Style-job throughput with 1 vs 2 `python -m app.worker` processes (JOB_BACKEND=redis), tiny jobs.

    python -m bench.style_workers                          # 1 then 2 workers, 12 jobs of 64 px x 40 steps (~30 s)
    python -m bench.style_workers --workers 1,2,3 --jobs 24

It starts its own redis-server on a free loopback port (no persistence, a temporary directory), one API
(uvicorn app.main:app, JOB_BACKEND=redis, DEVICE=cpu, a temporary DATA_DIR, a per-run REDIS_NAMESPACE) and, per
round, N workers (DEVICE=cpu, TORCH_THREADS=--torch-threads, default 1, so that workers do not fight over cores);
every process logs to a file in the temporary directory. A round waits until its N workers log "listening on",
runs one warm-up job per worker, then submits --jobs jobs back to back and polls them until all have finished;
its workers get SIGTERM before the next round. Everything started is stopped at the end, also on Ctrl-C.

How to read the table: `seconds` is the wall time from the first submit to the last job's finished_at, `jobs/s`
is jobs / seconds; `latency` is the mean of finished_at - created_at (queueing included, so it grows with the
batch); `run` is the mean of finished_at - started_at (one job's compute; it grows when workers contend for
cores); `peak` is the most jobs that were running at once; `busy` is run x jobs / (workers x seconds), the share
of the workers' time spent computing (the rest is the hand-over to the next job: app.worker looks at the queue
at most every 100 ms; at 500 ms, its first setting, busy was 66 % on jobs this small). `other load` is
the CPU used during the batch by processes this bench did not start, in cores: far from 0, the machine was shared
and the round is not clean. `speed-up` is jobs/s over the 1-worker round of the same run. With one torch thread
per worker, N workers can at best be N x faster while N <= the number of cores.
Exit status 1 when a job did not succeed (the failures and the workers' log tails are printed), 130 on Ctrl-C.
"""
from __future__ import annotations

import argparse
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import psutil

from bench.servers import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
CONTENT = REPO_ROOT / "data" / "style" / "chelsea.png"
POLL_S = 0.1
READY_TIMEOUT_S = 120.0
JOB_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 40.0  # app.worker gives a running job up to 30 s to hand itself back


# ---------------------------------------------------------------- processes
class Processes:
    """Every child this bench starts, each logging to its own file; stop_all() ends them, newest first."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.children: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        with open(self.log_dir / f"{name}.log", "wb") as log:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(cmd, cwd=REPO_ROOT, env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT)
        self.children.append((name, process))
        return process

    def cpu_seconds(self) -> float:
        """CPU time used so far by this bench and the children still running."""
        total = 0.0
        for pid in [os.getpid()] + [p.pid for _, p in self.children if p.poll() is None]:
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, process: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.children = [(n, p) for n, p in self.children if p is not process]

    def stop_all(self) -> None:
        for _, process in list(reversed(self.children)):
            self.stop(process)


def start_redis(procs: Processes, work_dir: Path) -> str:
    port = free_port()
    procs.start("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--dir", str(work_dir)], {})
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    client = redis.Redis.from_url(url)
    wait_until(lambda: _ping(client), "redis-server answering PING", procs, "redis")
    client.close()
    return url


def _ping(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


def start_api(procs: Processes, env: dict[str, str]) -> str:
    port = free_port()
    procs.start("api", [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port",
                        str(port), "--log-level", "warning", "--no-access-log"], env)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _ready(base), "the API's /readyz", procs, "api")
    return base


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_workers(procs: Processes, env: dict[str, str], count: int, round_no: int) -> list[str]:
    names = [f"worker-r{round_no}-{i}" for i in range(count)]
    for name in names:
        procs.start(name, [sys.executable, "-m", "app.worker"], env)
    for name in names:
        wait_until(lambda: "listening on" in procs.log(name), f"{name} logging 'listening on'", procs, name)
    return names


def wait_until(check, what: str, procs: Processes, name: str, timeout: float = READY_TIMEOUT_S) -> None:
    process = next(p for n, p in procs.children if n == name)
    deadline = time.monotonic() + timeout
    while not check():
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode} before {what}:\n{tail(procs.log(name))}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} after {timeout:.0f} s:\n{tail(procs.log(name))}")
        time.sleep(0.2)


def tail(text: str, lines: int = 25) -> str:
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


# ---------------------------------------------------------------- jobs
@dataclass
class Round:
    workers: int
    jobs: int
    seconds: float
    latency_s: float
    run_s: float
    peak: int
    other_cores: float  # CPU used meanwhile by processes this bench did not start, in cores

    @property
    def busy(self) -> float:
        """The share of the workers' wall time spent running jobs (the rest: waiting for the next message)."""
        return self.run_s * self.jobs / (self.workers * self.seconds)

    @property
    def throughput(self) -> float:
        return self.jobs / self.seconds


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def submit(client: httpx.Client, content: bytes, preset: str, size: int, steps: int) -> str:
    response = client.post("/v1/style/jobs", files={"content": (CONTENT.name, content, "image/png")},
                           data={"style_preset": preset, "size": str(size), "steps": str(steps)})
    if response.status_code != 202:
        raise RuntimeError(f"submit answered {response.status_code}: {response.text[:300]}")
    return response.json()["id"]


def wait_all(client: httpx.Client, ids: list[str]) -> dict[str, dict]:
    """Polls every job until it has finished; id -> its last view."""
    done: dict[str, dict] = {}
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while len(done) < len(ids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(ids) - len(done)} jobs unfinished after {JOB_TIMEOUT_S:.0f} s")
        for job_id in ids:
            if job_id not in done:
                view = client.get(f"/v1/style/jobs/{job_id}").json()
                if view["status"] in ("succeeded", "failed", "cancelled"):
                    done[job_id] = view
        time.sleep(POLL_S)
    return done


def failures(views: dict[str, dict]) -> list[str]:
    return [f"{v['id']}: {v['status']} ({v.get('error') or v.get('notice')})"
            for v in views.values() if v["status"] != "succeeded"]


def peak_running(views: list[dict]) -> int:
    events = sorted([(epoch(v["started_at"]), 1) for v in views] + [(epoch(v["finished_at"]), -1) for v in views])
    running = peak = 0
    for _, delta in events:  # at equal times the finish (-1) sorts first
        running += delta
        peak = max(peak, running)
    return peak


def host_cpu_seconds() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def run_batch(procs: Processes, client: httpx.Client, args, content: bytes, preset: str, workers: int) -> Round:
    start, host_before, ours_before = time.time(), host_cpu_seconds(), procs.cpu_seconds()
    ids = [submit(client, content, preset, args.size, args.steps) for _ in range(args.jobs)]
    views = wait_all(client, ids)
    other = (host_cpu_seconds() - host_before) - (procs.cpu_seconds() - ours_before)
    failed = failures(views)
    if failed:
        raise JobsFailed(failed)
    finished = [epoch(v["finished_at"]) for v in views.values()]
    return Round(workers, args.jobs, max(finished) - start,
                 statistics.mean(epoch(v["finished_at"]) - epoch(v["created_at"]) for v in views.values()),
                 statistics.mean(epoch(v["finished_at"]) - epoch(v["started_at"]) for v in views.values()),
                 peak_running(list(views.values())), max(0.0, other) / (time.time() - start))


class JobsFailed(RuntimeError):
    def __init__(self, failed: list[str]):
        super().__init__(f"{len(failed)} jobs did not succeed:\n" + "\n".join("    " + f for f in failed))


def one_round(procs: Processes, client: httpx.Client, args, worker_env: dict[str, str], content: bytes,
              preset: str, workers: int, round_no: int) -> Round:
    names = start_workers(procs, worker_env, workers, round_no)
    try:
        warm = [submit(client, content, preset, args.size, args.steps) for _ in range(workers)]
        failed = failures(wait_all(client, warm))
        if failed:
            raise JobsFailed(failed)
        return run_batch(procs, client, args, content, preset, workers)
    except JobsFailed:
        for name in names:
            print(f"--- {name} log (tail)\n{tail(procs.log(name))}", file=sys.stderr)
        raise
    finally:
        for process in [p for n, p in procs.children if n in names]:
            process.terminate()
        for process in [p for n, p in procs.children if n in names]:
            procs.stop(process)


# ---------------------------------------------------------------- report
def report(rounds: list[Round]) -> str:
    base = next((r for r in rounds if r.workers == 1), None)
    lines = ["| workers | jobs | seconds | jobs/s | latency s | run s | peak | busy | other load | speed-up |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rounds:
        speedup = f"{r.throughput / base.throughput:.2f}x" if base else "-"
        lines.append(f"| {r.workers} | {r.jobs} | {r.seconds:.1f} | {r.throughput:.2f} | {r.latency_s:.1f} | "
                     f"{r.run_s:.2f} | {r.peak} | {r.busy:.0%} | {r.other_cores:.2f} | {speedup} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="worker counts, one round each (comma-separated)")
    parser.add_argument("--jobs", type=int, default=12, help="jobs per round, after the warm-up")
    parser.add_argument("--size", type=int, default=64, help="output size of each job (px, longest side)")
    parser.add_argument("--steps", type=int, default=40, help="optimisation steps of each job")
    parser.add_argument("--preset", default="starry_night", help="the style preset of every job")
    parser.add_argument("--torch-threads", type=int, default=1, help="TORCH_THREADS of each worker")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temporary directory with every log")
    args = parser.parse_args(argv)
    args.worker_counts = [int(n) for n in args.workers.split(",") if n.strip()]
    return args


def run(args, work_dir: Path, procs: Processes) -> list[Round]:
    common = {"JOB_BACKEND": "redis", "REDIS_URL": start_redis(procs, work_dir), "DEVICE": "cpu",
              "REDIS_NAMESPACE": f"bench-{secrets.token_hex(4)}", "DATA_DIR": str(work_dir / "data"),
              "LOG_LEVEL": "info"}
    api_env = {**common, "MAX_QUEUED_JOBS": str(args.jobs + max(args.worker_counts) + 8)}
    worker_env = {**common, "TORCH_THREADS": str(args.torch_threads)}
    base = start_api(procs, api_env)
    content = CONTENT.read_bytes()
    rounds = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for round_no, workers in enumerate(args.worker_counts):
            rounds.append(one_round(procs, client, args, worker_env, content, args.preset, workers, round_no))
            r = rounds[-1]
            print(f"  {workers} worker(s): {r.jobs} jobs in {r.seconds:.1f} s, {r.throughput:.2f} jobs/s", flush=True)
    return rounds


def _raise_on_sigterm(*_) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)  # so that `finally` stops the children on SIGTERM too
    work_dir = Path(tempfile.mkdtemp(prefix="bench-style-workers-"))
    procs = Processes(work_dir)
    print(f"bench.style_workers on {platform.node()} ({os.cpu_count()} CPUs): {args.jobs} jobs of {args.size} px x "
          f"{args.steps} steps per round, workers {args.worker_counts}, TORCH_THREADS={args.torch_threads}",
          flush=True)
    try:
        rounds = run(args, work_dir, procs)
    except RuntimeError as exc:
        print(f"bench.style_workers: {exc}\n(every log: {work_dir})", file=sys.stderr)
        args.keep_logs = True
        return 1
    except KeyboardInterrupt:
        print("bench.style_workers: interrupted; stopping everything it started", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if not args.keep_logs:
            shutil.rmtree(work_dir, ignore_errors=True)
    print("\n" + report(rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
