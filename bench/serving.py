"""Serving benchmark: throughput and latency of every predict endpoint against an echo ceiling.

    python -m bench.serving                      # the full run (a few minutes)
    python -m bench.serving --requests 200       # quicker, noisier

It starts real uvicorn servers on loopback (the model server, and bench.echo_app which parses
the same upload and answers a constant), drives them with a light keep-alive HTTP/1.1 client at
concurrency 1 and 32, and prints requests/s and p50/p99 latency, the ratio to the echo ceiling,
and for objects the gain of dynamic batching (BATCH_MAX_SIZE=32 vs 1).
"""
import argparse
import asyncio
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
HELDOUT = REPO_ROOT / "data" / "heldout"


# ---------------------------------------------------------------- payloads
def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(field: str, filename: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    boundary = "benchboundary7d1a"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def payloads() -> dict[str, tuple[str, bytes, str]]:
    """endpoint name -> (path, body, content type), from real held-out examples."""
    with np.load(HELDOUT / "mnist-test.npz") as mnist, np.load(HELDOUT / "cifar-test.npz") as cifar, \
            np.load(HELDOUT / "sst2-dev.npz") as sst:
        digit, photo, sentence = mnist["x"][0], cifar["x"][0], str(sst["texts"][0])
    digits_body, digits_type = multipart("file", "digit.png", png_bytes(digit), "image/png")
    objects_body, objects_type = multipart("file", "photo.png", png_bytes(photo), "image/png")
    return {
        "digits": ("/v1/digits/predict", digits_body, digits_type),
        "objects": ("/v1/objects/predict", objects_body, objects_type),
        "sentiment": ("/v1/sentiment/predict", json.dumps({"text": sentence}).encode(), "application/json"),
    }


# ---------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A uvicorn subprocess on loopback; a context manager that waits for /readyz."""

    def __init__(self, app: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.app, self.env = app, {**os.environ, **(env or {})}

    def __enter__(self) -> "Server":
        cmd = [sys.executable, "-m", "uvicorn", self.app, "--host", "127.0.0.1", "--port", str(self.port),
               "--log-level", "warning", "--no-access-log"]
        self.process = subprocess.Popen(cmd, cwd=REPO_ROOT, env=self.env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.app} exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"GET /readyz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.app} not ready in 120 s")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


# ---------------------------------------------------------------- client
async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    return status, await reader.readexactly(length)


async def worker(port: int, request: bytes, count: int, latencies: list[float], errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(count):
            start = time.perf_counter()
            writer.write(request)
            status, body = await read_response(reader)
            latencies.append(time.perf_counter() - start)
            if status != 200:
                errors.append(f"{status} {body[:120]!r}")
    finally:
        writer.close()


@dataclass
class Result:
    endpoint: str
    server: str
    concurrency: int
    requests: int
    errors: int
    throughput: float
    p50_ms: float
    p99_ms: float


async def measure(port: int, endpoint: str, server: str, path: str, body: bytes, content_type: str,
                  concurrency: int, requests: int) -> Result:
    request = (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: {content_type}\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    warmup_latencies, warmup_errors = [], []
    await asyncio.gather(*(worker(port, request, 5, warmup_latencies, warmup_errors) for _ in range(concurrency)))
    latencies, errors = [], []
    per_worker = max(1, requests // concurrency)
    start = time.perf_counter()
    await asyncio.gather(*(worker(port, request, per_worker, latencies, errors) for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    if errors or warmup_errors:
        print(f"  errors on {server} {endpoint}: {(warmup_errors + errors)[:3]}", file=sys.stderr)
    latencies.sort()
    return Result(endpoint, server, concurrency, len(latencies), len(errors), round(len(latencies) / elapsed, 1),
                  round(statistics.median(latencies) * 1000, 2),
                  round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000, 2))


def run_suite(server: Server, label: str, endpoints: dict, concurrencies: list[int], requests: int) -> list[Result]:
    results = []
    for name, (path, body, content_type) in endpoints.items():
        for concurrency in concurrencies:
            result = asyncio.run(measure(server.port, name, label, path, body, content_type, concurrency,
                                         requests if concurrency > 1 else requests // 4))
            print(f"  {label:14s} {name:10s} c={concurrency:<3d} {result.throughput:8.1f} req/s  "
                  f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms", flush=True)
            results.append(result)
    return results


# ---------------------------------------------------------------- report
def report(results: list[Result]) -> str:
    by_key = {(r.server, r.endpoint, r.concurrency): r for r in results}
    lines = ["| endpoint | concurrency | model req/s | echo req/s | ratio | model p50 / p99 ms | echo p50 / p99 ms |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        if r.server != "model":
            continue
        echo = by_key[("echo", r.endpoint, r.concurrency)]
        lines.append(f"| {r.endpoint} | {r.concurrency} | {r.throughput:.0f} | {echo.throughput:.0f} | "
                     f"{r.throughput / echo.throughput:.0%} | {r.p50_ms:.1f} / {r.p99_ms:.1f} | "
                     f"{echo.p50_ms:.1f} / {echo.p99_ms:.1f} |")
    unbatched = [r for r in results if r.server == "model-unbatched"]
    for r in unbatched:
        batched = by_key[("model", r.endpoint, r.concurrency)]
        lines.append(f"\nobjects at concurrency {r.concurrency}: batching on {batched.throughput:.0f} req/s, "
                     f"off {r.throughput:.0f} req/s -> {batched.throughput / r.throughput:.2f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per measurement at concurrency > 1")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--device", default=os.environ.get("DEVICE", "auto"))
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    endpoints = payloads()
    env = {"DEVICE": args.device}
    print(f"bench.serving on {platform.node()} ({os.cpu_count()} CPUs), DEVICE={args.device}")

    results = []
    with Server("app.main:app", env) as server:
        results += run_suite(server, "model", endpoints, args.concurrency, args.requests)
    with Server("bench.echo_app:app") as server:
        results += run_suite(server, "echo", endpoints, args.concurrency, args.requests)
    with Server("app.main:app", {**env, "BATCH_MAX_SIZE": "1"}) as server:
        results += run_suite(server, "model-unbatched", {"objects": endpoints["objects"]},
                             [c for c in args.concurrency if c > 1], args.requests)

    print("\n" + report(results))
    if args.out:
        args.out.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")


if __name__ == "__main__":
    main()
