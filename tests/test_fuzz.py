"""Property-based fuzzing of every operation in the OpenAPI schema against a real uvicorn (schemathesis).

The server runs over the tiny weights with JOB_WORKERS=0 (style jobs queue and never run) and a large
MAX_QUEUED_JOBS. Each operation gets a bounded, derandomized set of generated requests (valid and invalid);
every response must be no 5xx, carry a status code the schema documents, and match the documented schema
and content type. Then a stateful phase follows the links between the style job operations (test_fuzz_stateful).
"""
import os
import subprocess

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, ensure_resource_availability,
                                               response_schema_conformance, status_code_conformance,
                                               use_after_free)

from app.core.config import Settings
from app.main import create_app
from tests.test_e2e import REPO_ROOT, free_port, server_command, stop, wait_until_ready
from tests.test_style_api import CONTENT

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


# --- the stateful phase: submit -> get, result, preview, delete -------------------------------------------------
# The links are inferred by schemathesis' dependency analysis (POST /v1/style/jobs 202 and every job listing or
# job answer -> GET /v1/style/jobs/{job_id}, /result, /preview, DELETE), so the schema needs none written. The
# event stream is left out: with JOB_WORKERS=0 a queued job's stream stays open (keep-alives) until the job ends.
STATEFUL_SCHEMA = schema.include(path_regex=r"^/v1/style/jobs").exclude(path_regex=r"/events$")
STATEFUL_CHECKS = [*CHECKS, use_after_free, ensure_resource_availability]
STATEFUL_RUNS, STATEFUL_STEPS = 40, 10
VALID_JOB = {"content": CONTENT, "style_preset": ["udnie"], "size": "64", "steps": "5"}


def empty_the_job_store(base_url: str) -> None:
    """Cancel, then delete, every job: each scenario starts from the same empty store. Hypothesis replays scenarios
    from their recorded choices; a job list that grew between two runs would enable other links (flaky data)."""
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for _ in range(1000):
            jobs = client.get("/v1/style/jobs", params={"limit": 100}).json()["jobs"]
            if not jobs:
                return
            for job in jobs:
                client.delete(f"/v1/style/jobs/{job['id']}")
    raise AssertionError("the job store did not empty")


def test_fuzz_stateful(fuzz_server):
    """Scenarios of up to STATEFUL_STEPS calls that follow the links from one answer to the next. A generated
    multipart body almost never is a job the server accepts (an image, a known preset, options in range), so every
    other submit is a valid one: the links from a 202 are then followed to a real job."""
    base_url, log_path = fuzz_server
    machine = STATEFUL_SCHEMA.as_state_machine()
    assert any(name.startswith("POST_v1_style_jobs___202_") for name in dir(machine)), "no link from a submit"

    class Workflow(machine):
        def setup(self):
            self.submits = 0  # per scenario, so that a scenario replayed makes the same requests
            empty_the_job_store(base_url)  # ... and gets the same answers (which rules hypothesis may pick)

        def before_call(self, case):
            if case.method == "POST" and case.path == "/v1/style/jobs":
                self.submits += 1
                if self.submits % 2:
                    case.body = dict(VALID_JOB)

        def get_call_kwargs(self, case):
            return {"base_url": base_url, "timeout": 30}

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            statuses.append((case.method, case.path, response.status_code))
            case.validate_response(response, checks=STATEFUL_CHECKS, transport_kwargs=kwargs)

    statuses: list[tuple[str, str, int]] = []
    try:
        Workflow.run(settings=settings(max_examples=STATEFUL_RUNS, stateful_step_count=STATEFUL_STEPS,
                                       derandomize=True, deadline=None, database=None, phases=[Phase.generate],
                                       suppress_health_check=list(HealthCheck)))
    except Exception:
        print(f"--- server log (tail) ---\n{log_path.read_text(errors='replace')[-3000:]}")
        raise
    # a job reached: anything but 404 (unknown id) and 422 (a malformed one); JOB_WORKERS=0: result, preview 409
    reached = {(method, path, status) for method, path, status in statuses if "{job_id}" in path
               and status not in (404, 422)}
    print(f"{len(statuses)} stateful calls; on a real job: {sorted(reached)}")
    assert ("POST", "/v1/style/jobs", 202) in statuses
    assert {(method, path) for method, path, _ in reached} == {
        ("GET", "/v1/style/jobs/{job_id}"), ("GET", "/v1/style/jobs/{job_id}/result"),
        ("GET", "/v1/style/jobs/{job_id}/preview"), ("DELETE", "/v1/style/jobs/{job_id}")}
