"""Classifiers beside a running style job, on one shared CPU: what WORKER_NICE buys.

    python -m bench.contention                   # the defaults against nice 10 and one thread fewer, 256 px
    python -m bench.contention --configs 0:2 10:2 10:1 --size 128 --steps 100

Each config is WORKER_NICE:STYLE_THREADS (STYLE_THREADS 0: the server's default). For each, in one run, it starts this server (`python -m app`, one embedded style worker) and measures:
* digits p50 at concurrency 1 (`hey`, the held-out MNIST digit) on the idle server;
* a style job (chelsea.png x Starry Night, default options but --size/--steps) alone: its run time;
* the same job again, with digits at concurrency 1 running all the while: the p50 of those predicts and the job's
  run time.
It prints, per config, the p50 ratio (target <= 2x the idle p50) and the job's slow-down (target <= 1.25x).
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.servers import REPO_ROOT, Server, payloads
from bench.serving import hey_binary, hey_round

CONTENT = REPO_ROOT / "data" / "style" / "chelsea.png"
PRESET = "starry_night"
JOB_TIMEOUT_S = 900.0


def submit(client: httpx.Client, size: int, steps: int) -> str:
    response = client.post("/v1/style/jobs", files={"content": (CONTENT.name, CONTENT.read_bytes(), "image/png")},
                           data={"style_preset": PRESET, "size": str(size), "steps": str(steps)})
    response.raise_for_status()
    return response.json()["id"]


def view(client: httpx.Client, job_id: str) -> dict:
    return client.get(f"/v1/style/jobs/{job_id}").json()


def run_seconds(job: dict) -> float:
    from datetime import datetime

    def epoch(iso: str) -> float:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()

    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job['id']} {job['status']}: {job.get('error')}")
    return epoch(job["finished_at"]) - epoch(job["started_at"])


def wait_for(client: httpx.Client, job_id: str, statuses: tuple[str, ...]) -> dict:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        job = view(client, job_id)
        if job["status"] in statuses:
            return job
        time.sleep(0.1)
    raise RuntimeError(f"job {job_id} not {statuses} after {JOB_TIMEOUT_S:.0f} s")


def measure(config: str, args, hey: str, body_file: Path, payload) -> dict:
    nice, threads = config.split(":")
    env = {"WORKER_NICE": nice, "STYLE_THREADS": threads, "JOB_WORKERS": "1"}
    with tempfile.TemporaryDirectory(prefix="bench-contention-") as data_dir, \
            Server(env={"DATA_DIR": data_dir, **env}) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        hey_round(hey, server.url, payload, body_file, 1, 100)  # warm-up
        idle = statistics.median(hey_round(hey, server.url, payload, body_file, 1, args.requests).p50_ms
                                 for _ in range(3))
        alone = run_seconds(wait_for(client, submit(client, args.size, args.steps), ("succeeded", "failed")))
        job_id = submit(client, args.size, args.steps)
        wait_for(client, job_id, ("running", "succeeded", "failed"))
        busy = []
        while view(client, job_id)["status"] == "running":
            busy.append(hey_round(hey, server.url, payload, body_file, 1, args.requests).p50_ms)
        beside = run_seconds(wait_for(client, job_id, ("succeeded", "failed")))
    figures = {"config": f"WORKER_NICE={nice} STYLE_THREADS={threads}", "idle_p50_ms": idle, "busy_p50_ms": statistics.median(busy), "rounds": len(busy),
               "job_alone_s": alone, "job_beside_s": beside}
    print(f"  {figures['config']}: digits p50 idle {idle:.2f} ms, beside the job {figures['busy_p50_ms']:.2f} ms "
          f"({len(busy)} rounds); job alone {alone:.1f} s, beside the predicts {beside:.1f} s", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["0:0", "10:0", "10:1", "0:1"], help="WORKER_NICE:STYLE_THREADS to compare")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--requests", type=int, default=200, help="digits requests per hey round")
    args = parser.parse_args()
    hey, payload = hey_binary(), payloads()["digits"]
    with tempfile.NamedTemporaryFile(suffix=".body") as body:
        body.write(payload.body)
        body.flush()
        rows = [measure(config, args, hey, Path(body.name), payload) for config in args.configs]
    print(f"\n| config | digits p50 idle | beside a {args.size} px job | ratio (target <= 2x) | job alone | "
          "beside the predicts | slow-down (target <= 1.25x) |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['idle_p50_ms']:.2f} ms | {r['busy_p50_ms']:.2f} ms | "
              f"{r['busy_p50_ms'] / r['idle_p50_ms']:.2f}x | {r['job_alone_s']:.1f} s | {r['job_beside_s']:.1f} s | "
              f"{r['job_beside_s'] / r['job_alone_s']:.2f}x |")


if __name__ == "__main__":
    main()
