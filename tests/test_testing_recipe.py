"""The recipe for users' own integration tests (app/testing.py, README "Testing your app against it"): a tiny user
project run by pytest in a subprocess, and create_app(wait_until_ready=True) itself."""
import io
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.serving.loading import StartupError
from app.testing import make_test_settings, sample_png, wait_for_job

REPO_ROOT = Path(__file__).resolve().parents[1]
QUICK_FAILURE_S = 30  # a start that cannot succeed says so well within this (busy 2-core machine included)

# The README's recipe, verbatim: the user's conftest.py and test file.
CONFTEST = '''\
pytest_plugins = ["app.testing"]
'''
USER_TESTS = '''\
import pytest

from app.testing import sample_png, wait_for_job


def test_sentiment(model_server_client):
    response = model_server_client.post("/v1/sentiment/predict", json={"text": "a gripping, beautifully acted film"})
    assert response.status_code == 200 and response.json()["label"] == "positive"


def test_a_style_job_runs_to_the_end(model_server_client):
    response = model_server_client.post("/v1/style/jobs", data={"style_preset": "starry_night", "steps": 2},
                                        files={"content": ("photo.png", sample_png(), "image/png")})
    job = wait_for_job(model_server_client, response.json()["id"])
    assert job["status"] == "succeeded"
    assert model_server_client.get(job["result_url"]).headers["content-type"] == "image/png"


@pytest.mark.model_server(api_keys="ci:secret")
def test_with_an_api_key(model_server_client):
    assert model_server_client.get("/v1/models").status_code == 401
    model_server_client.headers["X-API-Key"] = "secret"
    assert model_server_client.get("/v1/models").status_code == 200
'''
# Beside it, what must not pass: a wrong expectation fails, a server that cannot start errors at setup; and a test
# on the server the last one used does not see its headers. Run before and after USER_TESTS, so two servers start.
TESTS_BEFORE = '''\
def test_a_wrong_expectation(model_server_client):
    assert model_server_client.get("/readyz").json()["status"] == "loading"
'''
TESTS_AFTER = '''\
import pytest


@pytest.mark.model_server(api_keys="ci:secret")
def test_the_headers_of_the_last_test_are_gone(model_server_client):
    assert "x-api-key" not in model_server_client.headers
    assert model_server_client.get("/v1/models").status_code == 401


@pytest.mark.model_server(weights_dir="/nonexistent/weights")
def test_a_server_that_cannot_start(model_server_client):
    pass
'''


def outcomes(junit: Path) -> dict[str, tuple[str, str]]:
    """test name -> (passed | failed | error | skipped, message) from pytest's JUnit XML."""
    result = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                message = (child.get("message") or "") + (child.text or "")
        result[case.get("name")] = (outcome, message)
    return result


def test_the_recipe_in_a_user_project(tmp_path):
    project = tmp_path / "user-project"
    project.mkdir()
    (project / "conftest.py").write_text(CONFTEST)
    (project / "test_mine.py").write_text(USER_TESTS)
    (project / "test_before.py").write_text(TESTS_BEFORE)
    (project / "test_after.py").write_text(TESTS_AFTER)
    junit = tmp_path / "junit.xml"
    started = time.monotonic()
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
               "test_before.py", "test_mine.py", "test_after.py"]
    done = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=240,
                          env={**_env(), "PYTHONPATH": str(REPO_ROOT)})
    log = f"\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    got = outcomes(junit)
    assert {name: outcome for name, (outcome, _) in got.items()} == {
        "test_sentiment": "passed", "test_a_style_job_runs_to_the_end": "passed", "test_with_an_api_key": "passed",
        "test_a_wrong_expectation": "failed", "test_a_server_that_cannot_start": "error",
        "test_the_headers_of_the_last_test_are_gone": "passed"}, log
    assert done.returncode == 1, log
    assert "StartupError" in got["test_a_server_that_cannot_start"][1], log
    assert "manifest" in got["test_a_server_that_cannot_start"][1], log
    assert "assert 'ready' == 'loading'" in got["test_a_wrong_expectation"][1], log
    print(f"user project: {time.monotonic() - started:.1f} s")


def _env() -> dict[str, str]:
    """This environment without the server's own settings (a user's CI would not have ours)."""
    from app.core.config import Settings

    names = {name.upper() for name in Settings.model_fields}
    return {key: value for key, value in os.environ.items() if key.upper() not in names}


def test_the_readme_shows_the_tested_recipe():
    readme = (REPO_ROOT / "README.md").read_text()
    for block in (CONFTEST, USER_TESTS):
        assert block in readme, f"README.md should show, verbatim, the recipe this file runs:\n{block}"


# ------------------------------------------------------------------------ create_app(wait_until_ready=True)

def test_ready_on_entry_no_readyz_poll(tiny_weights_dir, tmp_path):
    settings = make_test_settings(tmp_path / "data", weights_dir=tiny_weights_dir)
    with TestClient(create_app(settings, wait_until_ready=True)) as client:
        # the very first request is a predict: no poll of /readyz before it
        assert client.post("/v1/sentiment/predict", json={"text": "good"}).status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["style"] == "ready", ready.json()
        # a style job that names no size runs at make_test_settings's 64 px, to the end, in-process
        response = client.post("/v1/style/jobs", data={"style_preset": "udnie", "steps": 2},
                               files={"content": ("photo.png", sample_png(80, 60), "image/png")})
        assert response.status_code == 202, response.text
        job = wait_for_job(client, response.json()["id"], timeout_s=60)
        assert job["status"] == "succeeded" and job["params"]["size"] == 64, job
        result = client.get(job["result_url"])
        assert result.status_code == 200
        assert Image.open(io.BytesIO(result.content)).size == (64, 48)


def test_without_it_the_models_still_load_in_the_background(tiny_weights_dir, tmp_path):
    app = create_app(make_test_settings(tmp_path / "data", weights_dir=tiny_weights_dir, style_jobs_enabled=False))
    assert app.state.services.wait_until_ready is False


@pytest.fixture
def broken_weights(tiny_weights_dir, tmp_path) -> Path:
    """Tiny weights whose manifest no longer fits digits-cnn.pt: the checksums pass, the load itself fails."""
    weights = shutil.copytree(tiny_weights_dir, tmp_path / "weights")
    manifest = json.loads((weights / "manifest.json").read_text())
    manifest["models"]["digits-cnn"]["config"]["width"] = 16
    (weights / "manifest.json").write_text(json.dumps(manifest))
    return weights


def test_a_failed_load_is_an_error_at_startup_not_a_hang(broken_weights, tmp_path):
    app = create_app(make_test_settings(tmp_path / "data", weights_dir=broken_weights, style_jobs_enabled=False),
                     wait_until_ready=True)
    started = time.monotonic()
    with pytest.raises(StartupError, match=r"model loading failed: .*digits-cnn.pt: does not fit DigitsCNN"):
        with TestClient(app):
            pytest.fail("the app started serving although a model failed to load")
    assert time.monotonic() - started < QUICK_FAILURE_S


def test_a_style_worker_that_cannot_load_is_an_error_at_startup(tiny_weights_dir, tmp_path):
    settings = make_test_settings(tmp_path / "data", weights_dir=tiny_weights_dir,
                                  style_vgg_weights=tmp_path / "missing-vgg.pth")
    started = time.monotonic()
    with pytest.raises(StartupError, match=r"the style worker failed to start: .*missing-vgg.pth"):
        with TestClient(create_app(settings, wait_until_ready=True)):
            pytest.fail("the app started serving although the style worker could not load VGG")
    assert time.monotonic() - started < QUICK_FAILURE_S


def test_loading_past_ready_timeout_is_an_error(tiny_weights_dir, tmp_path):
    settings = make_test_settings(tmp_path / "data", weights_dir=tiny_weights_dir, style_jobs_enabled=False,
                                  ready_timeout_s=0.001)
    with pytest.raises(StartupError, match=r"not ready after READY_TIMEOUT_S=0.001 s: still waiting for the models"):
        with TestClient(create_app(settings, wait_until_ready=True)):
            pass


# ------------------------------------------------------------------------ the plugin module itself

def test_the_plugin_module_is_light_to_import():
    code = ("import sys, app.testing; heavy = [m for m in ('torch', 'app.main', 'fastapi', 'PIL') if m in "
            "sys.modules]; assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_test_settings_ignore_a_dot_env_file(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("API_KEYS=ci:secret\nJOB_WORKERS=3\n")
    monkeypatch.chdir(tmp_path)
    settings = make_test_settings(tmp_path / "data", job_workers=0)
    assert (settings.api_keys, settings.job_workers, settings.style_default_size) == ("", 0, 64)
    assert settings.data_dir == tmp_path / "data"
