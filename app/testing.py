"""Test your own code against this model server, in-process: a pytest plugin, and helpers that work without it.

In the conftest.py at the root of your tests::

    pytest_plugins = ["app.testing"]

then ask for a fixture::

    def test_sentiment(model_server_client):
        response = model_server_client.post("/v1/sentiment/predict", json={"text": "a delight"})
        assert response.status_code == 200

Fixtures
* ``model_server_client``: a Starlette ``TestClient`` (an ``httpx.Client``) of a server that is ready on entry:
  every model loaded and the style worker ready, so no test polls ``/readyz``. A server that cannot start fails the
  test at setup with the reason (``StartupError``), never a hang.
* ``model_server``: the same server as a ``ModelServer`` (``.client``, ``.app``, ``.settings``,
  ``.wait_for_job(id)``).
* ``model_server_settings``: the ``Settings`` fields the server runs with, on top of ``make_test_settings``'s
  (a dict, empty by default); override the fixture in a conftest.py or a test module to change them, or mark a
  test, class or module with ``@pytest.mark.model_server(api_keys="ci:secret", ...)`` (the marker wins).

One server is started per distinct set of settings and shared by the tests that ask for the same ones (it keeps
the jobs they submit; the client's headers and cookies are reset after each test); at most one runs at a time, in a
temporary DATA_DIR of its own, and it stops at the end of the session. Style jobs run in the server's own worker
process: ask for small ones (``size`` 64 is the least, ``steps`` 1 the least) and wait with ``wait_for_job``.

Without the plugin: ``with TestClient(create_app(make_test_settings(tmp_path), wait_until_ready=True)) as client:``.
The style worker is a spawned process, so a plain script that starts the app needs ``if __name__ == "__main__":``.

Light to import (pytest imports plugins at collection): the app, torch and PIL are imported when first used.
"""
from __future__ import annotations

import io
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from app.core.config import Settings

JOB_TIMEOUT_S = 120.0  # wait_for_job's default: a tiny job takes well under a second once the worker is ready
FINISHED = ("succeeded", "failed", "cancelled")
# What make_test_settings sets unless told otherwise: a job that names no size runs at the least one (64 px).
TEST_DEFAULTS: dict[str, Any] = {"style_default_size": 64}
MARKER = "model_server"


def make_test_settings(data_dir: str | Path, **overrides: Any) -> Settings:
    """Settings for a test server: DATA_DIR as given (a temporary folder), style jobs that name no size at 64 px,
    then `overrides` (any Settings field, e.g. api_keys="ci:secret", job_workers=0, weights_dir=...). Environment
    variables still apply (DEVICE=cpu in CI, say); a .env file is not read."""
    from app.core.config import Settings

    return Settings(_env_file=None, **{**TEST_DEFAULTS, "data_dir": Path(data_dir), **overrides})


def wait_for_job(client: TestClient, job_id: str, timeout_s: float = JOB_TIMEOUT_S, poll_s: float = 0.05) -> dict:
    """Poll GET /v1/style/jobs/{job_id} until the job has finished (succeeded, failed or cancelled) and return it;
    AssertionError with the job's last state after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get(f"/v1/style/jobs/{job_id}")
        assert response.status_code == 200, f"GET /v1/style/jobs/{job_id}: {response.status_code} {response.text}"
        job = response.json()
        if job["status"] in FINISHED:
            return job
        if time.monotonic() >= deadline:
            raise AssertionError(f"style job {job_id} did not finish in {timeout_s:g} s: {job}")
        time.sleep(poll_s)


def sample_png(width: int = 80, height: int = 60) -> bytes:
    """A small patterned PNG (red with blue squares), e.g. as the content photo of a style job."""
    from PIL import Image

    image = Image.new("RGB", (width, height), (200, 40, 40))
    for x in range(0, width, 8):
        for y in range(0, height, 8):
            if (x + y) // 8 % 2:
                image.paste((20, 20, 220), (x, y, x + 4, y + 4))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class ModelServer:
    """A running, ready server: call it with `client` (a TestClient), look inside with `app.state`."""

    client: TestClient
    settings: Settings

    @property
    def app(self) -> FastAPI:
        return self.client.app  # type: ignore[return-value]

    def wait_for_job(self, job_id: str, timeout_s: float = JOB_TIMEOUT_S) -> dict:
        return wait_for_job(self.client, job_id, timeout_s)


class ServerPool:
    """At most one running server, kept while the tests ask for the same settings; a start that failed is
    remembered, so the tests that want those settings all fail at once with its error instead of each retrying."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory):
        self._tmp = tmp_path_factory
        self._key: str | None = None
        self._server: ModelServer | None = None
        self._failure: BaseException | None = None
        self._stack = ExitStack()

    def get(self, overrides: dict[str, Any]) -> ModelServer:
        key = repr(sorted(overrides.items()))
        if key == self._key:
            if self._failure is not None:
                raise self._failure
            assert self._server is not None
            return self._server
        self.close()
        self._key = key
        try:
            self._server = self._start(overrides)
        except BaseException as exc:
            self._failure = exc
            raise
        return self._server

    def _start(self, overrides: dict[str, Any]) -> ModelServer:
        from fastapi.testclient import TestClient

        from app.main import create_app

        settings = make_test_settings(self._tmp.mktemp("model-server-data"), **overrides)
        client = self._stack.enter_context(TestClient(create_app(settings, wait_until_ready=True)))
        return ModelServer(client, settings)

    def close(self) -> None:
        self._key, self._server, self._failure = None, None, None
        stack, self._stack = self._stack, ExitStack()
        stack.close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}(**settings): Settings fields of the app.testing model server "
                            "this test (class, module) runs against, e.g. api_keys='ci:secret'")


@pytest.fixture(scope="session")
def model_server_pool(tmp_path_factory):
    pool = ServerPool(tmp_path_factory)
    yield pool
    pool.close()


@pytest.fixture
def model_server_settings() -> dict[str, Any]:
    """Settings fields of the test server (on top of make_test_settings's); override this fixture to change them."""
    return {}


@pytest.fixture
def model_server(request, model_server_settings, model_server_pool) -> ModelServer:
    overrides = dict(model_server_settings)
    for marker in reversed(list(request.node.iter_markers(MARKER))):  # module, then class, then the test itself
        if marker.args:
            raise pytest.UsageError(f"@pytest.mark.{MARKER} takes Settings fields as keywords, not {marker.args!r}")
        overrides.update(marker.kwargs)
    server = model_server_pool.get(overrides)
    headers = dict(server.client.headers)
    yield server
    server.client.headers.clear()
    server.client.headers.update(headers)
    server.client.cookies.clear()


@pytest.fixture
def model_server_client(model_server) -> TestClient:
    return model_server.client
