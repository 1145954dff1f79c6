"""What the benchmarks share: real held-out payloads and real server processes on loopback."""
import io
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
HELDOUT = REPO_ROOT / "data" / "heldout"
MODEL_SERVER = [sys.executable, "-m", "app"]  # started the way `make serve` and the Dockerfile start it


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(field: str, filename: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    boundary = "benchboundary7d1a"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class Payload:
    """One predict request built from a held-out example: its path, body and content type, and the raw input a
    handler decodes (image bytes or text)."""

    def __init__(self, task: str, raw: bytes | str):
        self.task, self.raw, self.path = task, raw, f"/v1/{task}/predict"
        if isinstance(raw, bytes):
            self.body, self.content_type = multipart("file", f"{task}.png", raw, "image/png")
        else:
            self.body, self.content_type = json.dumps({"text": raw}).encode(), "application/json"


def payloads() -> dict[str, Payload]:
    """task -> the first held-out example of its test set, as users send it."""
    with np.load(HELDOUT / "mnist-test.npz") as mnist, np.load(HELDOUT / "cifar-test.npz") as cifar, \
            np.load(HELDOUT / "sst2-dev.npz") as sst:
        digit, photo, sentence = mnist["x"][0], cifar["x"][0], str(sst["texts"][0])
    return {"digits": Payload("digits", png_bytes(digit)), "objects": Payload("objects", png_bytes(photo)),
            "sentiment": Payload("sentiment", sentence)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess on loopback (by default this model server, `python -m app`); a context manager that
    waits until `ready_path` answers 200."""

    def __init__(self, command: list[str] | None = None, env: dict[str, str] | None = None,
                 ready_path: str = "/readyz", name: str = "app"):
        self.port = free_port()
        self.command = [*(command or MODEL_SERVER), "--host", "127.0.0.1", "--port", str(self.port)]
        self.env, self.ready_path, self.name = {**os.environ, **(env or {})}, ready_path, name

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "Server":
        self.process = subprocess.Popen(self.command, cwd=REPO_ROOT, env=self.env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            if self._ready():
                return self
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"{self.name} not ready in 120 s")

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(f"GET {self.ready_path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
                return s.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def tree(self) -> list[psutil.Process]:
        """The server and every process it started (LitServe's workers, this server's style workers)."""
        root = psutil.Process(self.process.pid)
        return [root, *root.children(recursive=True)]

    @contextmanager
    def paused(self):
        """SIGSTOP the whole tree for the block: an idle server that polls (LitServe's loops take about half a
        core here) must not slow the one being measured."""
        tree = self.tree()
        for process in tree:
            process.suspend()
        try:
            yield
        finally:
            for process in tree:
                with suppress(psutil.NoSuchProcess):
                    process.resume()

    def __exit__(self, *exc) -> None:
        children = self.tree()[1:]
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        for child in children:  # what the server did not stop itself (LitServe leaves its workers running)
            with suppress(psutil.NoSuchProcess):
                child.kill()
