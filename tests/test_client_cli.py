"""The `model-server` command line (clients/python) run as a subprocess against a real server over the committed
weights: every command's output, `-o` written, the progress bar on stderr, the URL and key from flags and from the
environment, and errors as one line with a non-zero exit code and no traceback."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from model_server_client import Client
from tests.test_client import API_KEY, PHOTO, heldout, png, shared_server, wait_running

pytestmark = [pytest.mark.slow, pytest.mark.real_weights]

CLI_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def client_server(request, tmp_path_factory):
    yield from shared_server(request, tmp_path_factory)  # the server of test_client.py when it ran just before


@pytest.fixture
def server(client_server):
    return client_server


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-images")
    digits, digit_labels = heldout("mnist-test", 2)
    photos, photo_labels = heldout("cifar-test", 1)
    paths = {"seven": folder / "seven.png", "two": folder / "two.png", "photo": folder / "photo.png"}
    paths["seven"].write_bytes(png(digits[0]))
    paths["two"].write_bytes(png(digits[1]))
    paths["photo"].write_bytes(png(photos[0]))
    assert list(digit_labels) == [7, 2]
    return paths


def cli(*args: str, url: str | None = None, key: str | None = API_KEY, env: dict | None = None,
        stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """`model-server ARGS` (as `python -m model_server_client`), with --url and --api-key unless None."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_SERVER_")}
    flags = [*(["--url", url] if url else []), *(["--api-key", key] if key else [])]
    return subprocess.run([sys.executable, "-m", "model_server_client", *flags, *args], env={**base, **(env or {})},
                          input=stdin, capture_output=True, timeout=CLI_TIMEOUT_S)


def out(result: subprocess.CompletedProcess) -> str:
    return result.stdout.decode()


def err(result: subprocess.CompletedProcess) -> str:
    return result.stderr.decode()


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *words: str) -> str:
    text = err(result)
    assert result.returncode == code, (result.returncode, out(result), text)
    assert "Traceback" not in text and text.count("\n") == 1 and text.startswith("model-server: error: "), text
    for word in words:
        assert word in text, text
    return text


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "model-server"
    path = str(script) if script.exists() else shutil.which("model-server")
    assert path, "model-server is not on PATH: pip install -e ./clients/python"
    result = subprocess.run([path, "--version"], capture_output=True, timeout=CLI_TIMEOUT_S)
    assert result.returncode == 0 and out(result).startswith("model-server 0.")


def test_predict_digits_and_objects(server, images):
    one = cli("predict", "digits", str(images["seven"]), url=server.url)
    assert one.returncode == 0, err(one)
    assert out(one).startswith("7 (") and out(one).rstrip().endswith("%)")

    two = cli("predict", "digits", str(images["seven"]), str(images["two"]), "--model", "digits-mlp", url=server.url)
    assert two.returncode == 0, err(two)
    lines = out(two).splitlines()
    assert lines[0].startswith(f"{images['seven']}: 7 (") and lines[1].startswith(f"{images['two']}: 2 (")

    photo = cli("predict", "objects", str(images["photo"]), "--top-k", "3", url=server.url)
    assert photo.returncode == 0, err(photo)
    assert out(photo).startswith("cat (") and out(photo).count("%") == 4  # the best, then the top 3

    piped = cli("--json", "predict", "digits", "-", url=server.url, stdin=images["seven"].read_bytes())
    answer = json.loads(out(piped))
    assert answer["label"] == "7" and answer["model"] == "digits-cnn" and len(answer["top"]) == 3


def test_sentiment_one_and_many(server):
    one = cli("sentiment", "a gripping, beautifully acted film", url=server.url)
    assert one.returncode == 0 and out(one).startswith("positive ("), err(one)
    many = cli("sentiment", "a delight", "dull and far too long", url=server.url)
    lines = out(many).splitlines()
    assert many.returncode == 0 and lines[0].startswith("positive (") and lines[0].endswith("\ta delight")
    assert lines[1].startswith("negative (") and lines[1].endswith("\tdull and far too long")


def test_models_and_presets(server):
    models = cli("models", url=server.url)
    assert models.returncode == 0, err(models)
    lines = out(models).splitlines()
    assert len(lines) == 4 and lines[0].split()[:3] == ["digits-cnn", "digits", "default"]
    assert json.loads(out(cli("--json", "models", url=server.url)))[0]["name"] == "digits-cnn"
    presets = cli("presets", url=server.url)
    assert presets.returncode == 0 and "starry_night  The Starry Night, Vincent van Gogh (1889)" in out(presets)


def test_style_with_progress_and_output_file(server, tmp_path):
    target = tmp_path / "out.png"
    result = cli("style", str(PHOTO), "--preset", "starry_night", "--size", "64", "--steps", "12", "-o",
                 str(target), url=server.url)
    assert result.returncode == 0, err(result)
    assert out(result).strip() == str(target)
    image = Image.open(target)
    assert image.format == "PNG" and max(image.size) == 64
    progress = err(result).splitlines()
    assert progress[0].startswith("submitted style job ")
    bars = [line for line in progress if line.startswith("job ") and "[" in line]
    assert len(bars) >= 2 and "100%" in bars[-1] and "succeeded" in bars[-1], progress

    quiet = cli("style", str(PHOTO), "--preset", "udnie", "--size", "64", "--steps", "2", "--no-progress", "-o",
                str(tmp_path / "quiet.png"), url=server.url)
    assert quiet.returncode == 0 and (tmp_path / "quiet.png").exists()
    assert "[" not in err(quiet), err(quiet)


def test_env_vars_and_job_commands(server, tmp_path):
    env = {"MODEL_SERVER_URL": server.url, "MODEL_SERVER_API_KEY": API_KEY}
    submitted = cli("style", str(PHOTO), "--preset", "the_scream", "--size", "64", "--steps", "2", "--no-wait",
                    key=None, env=env)
    assert submitted.returncode == 0, err(submitted)
    job_id = out(submitted).strip()
    waited = cli("job", "wait", job_id, "--no-progress", "-o", str(tmp_path / "later.png"), key=None, env=env)
    assert waited.returncode == 0 and (tmp_path / "later.png").read_bytes().startswith(b"\x89PNG"), err(waited)
    status = cli("job", "status", job_id, key=None, env=env)
    assert status.returncode == 0 and out(status).startswith(f"{job_id} succeeded step 2/2")


def test_a_cancelled_job_exits_4(server):
    with Client(server.url, API_KEY) as client:
        job = client.style(PHOTO, preset="udnie", size=64, steps=2000)
        waiter = subprocess.Popen([sys.executable, "-m", "model_server_client", "--url", server.url, "--api-key",
                                   API_KEY, "job", "wait", job.id, "--poll-interval", "0.2"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_running(job)
            time.sleep(0.5)  # the waiter is following the job's events by now (if not, it finds it cancelled)
            cancelled = cli("job", "cancel", job.id, url=server.url)
            stdout, stderr = waiter.communicate(timeout=CLI_TIMEOUT_S)
        finally:
            if waiter.poll() is None:
                waiter.kill()
    report = f"cancel: {cancelled.returncode} {out(cancelled)!r} {err(cancelled)!r}; waiter: {waiter.returncode} " \
             f"{stdout.decode()!r} {stderr.decode()!r}"
    assert cancelled.returncode == 0 and f"{job.id} cancelled " in out(cancelled), report
    assert waiter.returncode == 4, report
    assert stderr.decode().splitlines()[-1] == f"model-server: error: style job {job.id} was cancelled", report
    assert "Traceback" not in stderr.decode(), report


def test_errors_are_one_line_with_exit_codes(server, images, tmp_path):
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    url = server.url
    cases = {  # (arguments, cli() keywords) -> (exit code, words of the one line on stderr)
        (("models",), (("key", None),)): (1, ["401 Unauthorized: missing API key", "--api-key",
                                             "MODEL_SERVER_API_KEY"]),
        (("style", str(PHOTO), "--preset", "mona_lisa"), ()): (1, ["422 Unprocessable Entity",
                                                                   "unknown style preset 'mona_lisa'"]),
        (("style", str(PHOTO), "--preset", "udnie", "--size", "9"), ()): (1, ["422", "size"]),
        (("predict", "objects", str(not_an_image)), ()): (1, ["415"]),
        (("predict", "digits", str(images["seven"]), "--model", "nope"), ()): (1, ["404"]),
        (("job", "status", "no-such-job"), ()): (1, ["404"]),
        (("predict", "digits", str(tmp_path / "missing.png")), ()): (2, ["cannot read image", "missing.png"]),
        (("style", str(PHOTO)), ()): (2, ["--preset"]),
        (("--retries", "0", "models"), (("url", "http://127.0.0.1:9"),)): (
            3, ["cannot connect to the server at http://127.0.0.1:9"]),
    }
    with ThreadPoolExecutor(4) as pool:  # subprocesses: most of their time is Python starting
        results = dict(zip(cases, pool.map(lambda case: cli(*case[0], **{"url": url, **dict(case[1])}), cases)))
        usage = pool.submit(cli, "predict", "faces", str(images["seven"]), url=url).result()
    for case, (code, words) in cases.items():
        assert_one_line_error(results[case], code, *words)
    assert usage.returncode == 2 and "invalid choice: 'faces'" in err(usage) and "Traceback" not in err(usage)
