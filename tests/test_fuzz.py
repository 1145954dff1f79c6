"""Property-based fuzzing of every operation in the OpenAPI schema against a real uvicorn (schemathesis).

The server runs over the tiny weights with JOB_WORKERS=0 (style jobs queue and never run) and a large
MAX_QUEUED_JOBS. Each operation gets a bounded, derandomized set of generated requests (valid and invalid);
every response must be no 5xx, carry a status code the schema documents, and match the documented schema
and content type.
"""
import os
import subprocess

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from app.core.config import Settings
from app.main import create_app
from tests.test_e2e import REPO_ROOT, free_port, server_command, stop, wait_until_ready

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 40  # per operation
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz_server(tiny_weights_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    log_path = tmp / "server.log"
    port = free_port()
    env = {**os.environ, "WEIGHTS_DIR": str(tiny_weights_dir), "DATA_DIR": str(tmp / "data"), "DEVICE": "cpu",
           "JOB_WORKERS": "0", "MAX_QUEUED_JOBS": "100000", "MAX_UPLOAD_BYTES": str(2 * 1024 * 1024),
           "LOG_LEVEL": "warning"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(server_command(port), cwd=REPO_ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(process, base_url, log_path)
        yield base_url, log_path
    finally:
        stop(process)


# The schema is built from the app itself at import (schemathesis parametrizes at collection time; its
# from_fixture loader does not work with pytest 9); test_served_schema_is_the_fuzzed_one ties it to the server.
OPENAPI = create_app(Settings()).openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)


def test_served_schema_is_the_fuzzed_one(fuzz_server):
    """The fuzzer only reaches what the schema declares: the server serves this schema and it has every route."""
    served = httpx.get(f"{fuzz_server[0]}/openapi.json").json()
    assert served == OPENAPI
    paths = served["paths"]
    for path in ("/healthz", "/readyz", "/v1/models", "/v1/models/{name}", "/v1/digits/predict",
                 "/v1/objects/predict", "/v1/sentiment/predict", "/v1/style/jobs", "/v1/style/jobs/{job_id}",
                 "/v1/style/jobs/{job_id}/result", "/v1/style/jobs/{job_id}/preview",
                 "/v1/style/jobs/{job_id}/events", "/v1/style/presets"):
        assert path in paths, f"{path} missing from the OpenAPI schema: {sorted(paths)}"


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck), database=None)
def test_fuzz(case, fuzz_server):
    base_url, log_path = fuzz_server
    try:
        case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=30)
    except AssertionError:
        tail = log_path.read_text(errors="replace")[-3000:]
        print(f"--- server log (tail) ---\n{tail}")
        raise
