"""The page and the docs tell the truth (issue 11, part 4), in Debian's Chromium against a real uvicorn:

- /docs (Swagger UI) and /redoc render with every request off the server blocked (assets from fastapi-offline);
- errors are sentences, the API's own detail one click away, and gone when the next action starts;
- a style job whose server goes away shows the lost connection, and recovers by itself when it is back
  (the server is killed with SIGKILL and started again on the same port and data directory);
- a server restarted on purpose (SIGTERM: its event streams end with `event: shutdown`) is announced as a restart,
  never as a lost connection, and the job is followed again when the server is back (same port and data directory);
- refusals whose reason only the server knows are shown in its words: a job over MAX_JOB_PIXEL_STEPS (422), too
  many event streams on a job (429; the page polls instead), a key's queue cap (429, MAX_QUEUED_JOBS_PER_OWNER);
- an event stream cut by a proxy is re-opened; one that cannot be had at all falls back to polling (Playwright cuts
  or blocks the stream) and the page goes back to the stream once it can;
- a job's time estimate before submitting and its eta while it runs (GET /v1/style/estimate, eta_s);
- the style form's defaults and bounds come from GET /v1/style/options;
- answers below a model's calibrated threshold (GET /v1/models calibration.low_confidence_below) read "Not sure";
- a 375 px wide phone: nothing cut off, the Steps label beside its input, the models table readable.

Everything is driven as a person would: the mouse, file inputs, the keyboard. Screenshots: test-artifacts/web-truth/.
"""
import os
import re
import signal
import subprocess
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from app.core.config import Settings
from tests.test_e2e import REPO_ROOT, free_port, server_command, wait_until_ready
from tests.test_web import JOB_TIMEOUT_MS, TIMEOUT_MS, browser, draw  # noqa: F401 (browser: a fixture)

pytestmark = pytest.mark.slow

ARTIFACTS = REPO_ROOT / "test-artifacts" / "web-truth"
RESTART_TIMEOUT_MS = 120_000  # the server started again (models loaded) and the page noticing it


class Server:
    """A real uvicorn that a test may kill (SIGKILL, like a crash or a pulled cable) and start again on the same
    port and data directory."""

    def __init__(self, tmp: Path, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "server.log"
        self.env = {**os.environ, "WEIGHTS_DIR": str(REPO_ROOT / "weights"), "DATA_DIR": str(tmp / "data"),
                    "DEVICE": "cpu", "JOB_WORKERS": "1", **env}
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(server_command(self.port), cwd=REPO_ROOT, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        wait_until_ready(self.process, self.url, self.log_path)

    def kill(self) -> None:
        """SIGKILL the server and its worker processes (its own process group)."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=20)

    def stop(self) -> None:
        """SIGTERM, as a deployment restarting the server does: open event streams get `event: shutdown`, the
        running style job goes back to its queue, the process exits."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("web-truth"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@contextmanager
def open_page(browser, server: Server, path: str = "/", width: int = 1100, height: int = 900,
              tolerated: frozenset = frozenset(), **context_args):
    """A fresh context with the network blocked: anything not to the test server is aborted and recorded; only the
    `tolerated` URLs may be tried (and fail)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(base_url=server.url, viewport={"width": width, "height": height}, **context_args)
    context.set_default_timeout(TIMEOUT_MS)
    outside: list[str] = []
    context.route("**/*", lambda route: (route.continue_() if route.request.url.startswith(server.url)
                                         else (outside.append(route.request.url), route.abort())))
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(path)
    if path == "/":
        page.wait_for_selector("body[data-ready=true]")
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"
    outside = [url for url in outside if url not in tolerated]
    assert not outside, f"the page tried to fetch from outside: {outside}"


def shot(target, name: str, full: bool = False) -> Path:
    path = ARTIFACTS / f"{name}.png"
    if hasattr(target, "viewport_size"):
        target.screenshot(path=str(path), full_page=full)
    else:
        target.screenshot(path=str(path))
    return path


@pytest.fixture(scope="module")
def photo(server, tmp_path_factory) -> Path:
    """A held-out CIFAR-10 photo upscaled to 128x128 PNG (the style jobs' content)."""
    data = np.load(REPO_ROOT / "data" / "heldout" / "cifar-test.npz")
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(data["x"][0]).resize((128, 128), Image.BICUBIC).save(path)
    return path


def style_options(server: Server) -> dict:
    response = httpx.get(f"{server.url}/v1/style/options", timeout=10)
    assert response.status_code == 200, "GET /v1/style/options is not served (yet)"
    return response.json()


def models_by_name(server: Server) -> dict:
    return {m["name"]: m for m in httpx.get(f"{server.url}/v1/models", timeout=10).json()["models"]}


def threshold_of(models: dict, task: str) -> tuple[str, float]:
    m = next(m for m in models.values() if m["task"] == task and m.get("default"))
    below = (m.get("calibration") or {}).get("low_confidence_below")
    assert isinstance(below, float | int), f"GET /v1/models has no calibration.low_confidence_below for {m['name']}"
    return m["name"], float(below)


def submit_style(page, photo: Path, size: int, steps: int) -> None:
    page.locator("#style-presets input").first.wait_for(state="attached")
    page.set_input_files("#style-content", str(photo))
    page.locator("#style-size").fill(str(size))
    page.locator("#style-steps").fill(str(steps))
    page.locator("#style-submit").click()


def as_sentence(text: str) -> str:
    """The server's words as the page writes them (api.js sentence()): a capital first, a full stop last."""
    text = text.strip()
    return text[0].upper() + text[1:] + ("" if text[-1] in ".!?" else ".")


def watch_connection_states(page) -> None:
    """window.connectionStates: every connection state the style panel goes through, in order."""
    page.evaluate("""() => { window.connectionStates = [];
        new MutationObserver(() => { const s = document.querySelector('#style-job').dataset.connection;
            if (s && window.connectionStates.at(-1) !== s) window.connectionStates.push(s); })
        .observe(document.querySelector('#style-job'), { attributes: true, attributeFilter: ['data-connection'] }); }""")


def step_shown(page) -> int:
    m = re.search(r"step (\d+) of", page.locator("#style-status").inner_text())
    return int(m[1]) if m else -1


def cancel_job(page) -> None:
    page.locator("#style-cancel").click()
    page.wait_for_function("document.querySelector('#style-job').dataset.status === 'cancelled'")


# ------------------------------------------------------------------------------------------------ docs

def test_docs_and_redoc_render_with_the_network_blocked(browser, server):
    with open_page(browser, server, "/docs") as page:
        operations = page.locator(".opblock")
        operations.first.wait_for()
        paths = " ".join(page.locator(".opblock-summary-path").all_inner_texts()).replace("\u200b", "")
        for path in ("/v1/digits/predict", "/v1/objects/predict", "/v1/sentiment/predict", "/v1/style/jobs"):
            assert path in paths
        assert operations.count() >= 12
        # open one operation with the mouse: its parameters and "Try it out" are there
        page.locator(".opblock-summary", has_text="/v1/models/").first.click()
        page.get_by_role("button", name="Try it out").first.wait_for()
        assets = page.evaluate("[...document.scripts].map(s => s.src).concat("
                               "[...document.querySelectorAll('link[rel=stylesheet]')].map(l => l.href))")
        assert assets and all(a.startswith(server.url + "/static-offline-docs/") for a in assets if a), assets
        shot(page, "docs-offline")
    # ReDoc's "powered by" footer tries its logo from its CDN; offline the image removes itself (onError)
    redoc_logo = "https://cdn.redoc.ly/redoc/logo-mini.svg"
    with open_page(browser, server, "/redoc", tolerated=frozenset({redoc_logo})) as page:
        page.locator("h2", has_text="Submit a style-transfer job").first.wait_for()  # the operation, rendered
        page.locator("h1", has_text="Model server").first.wait_for()
        assert page.locator("script[src]").evaluate_all("ss => ss.map(s => s.src)") == \
            [f"{server.url}/static-offline-docs/redoc.standalone.js"]
        page.wait_for_function("!document.querySelector(\"img[alt='redocly logo']\")")  # no broken image left
        shot(page, "redoc-offline")


# ------------------------------------------------------------------------------------------------ errors

def test_errors_are_sentences_with_the_api_detail_and_clear_on_the_next_action(browser, server, photo, tmp_path):
    with open_page(browser, server) as page:
        alert = page.locator("#object-error[role=alert]")
        page.set_input_files("#object-file", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                                     "buffer": b"this is not a picture"}])
        alert.locator(".message").wait_for()
        assert alert.locator(".message").inner_text() == \
            "This file is not a picture the server can read. Use a PNG, JPEG, GIF, BMP or WebP image."
        detail = alert.locator("details code")
        assert detail.is_hidden()  # the API's words are one click away, not in the way
        alert.locator("summary", has_text="Details").click()
        assert detail.is_visible() and detail.inner_text().startswith("HTTP 415: not an image")
        shot(alert, "error-objects-415")
        # the next photo clears the error, and a success is never shown beside an old error
        page.set_input_files("#object-file", str(photo))
        page.wait_for_selector("#object-label")
        assert alert.inner_text() == ""

        # a photo over the upload limit: "The photo is 14.5 MB; the limit is 10 MB."
        big = tmp_path / "holiday.jpg"
        big.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(int(14.5 * 1024 * 1024) - 4))
        page.set_input_files("#object-file", str(big))
        alert.locator(".message").wait_for()
        assert alert.locator(".message").inner_text() == "The photo is 14.5 MB; the limit is 10 MB."
        assert page.locator("#object-result").inner_text() == ""

        # style: a size out of range, in words, from the API's limits (the server's own 422 kept in Details)
        limits = style_options(server)["limits"]["size"]
        page.set_input_files("#style-content", str(photo))
        page.locator("#style-size").fill(str(limits["max"] * 5))
        page.locator("#style-steps").fill("3")
        page.locator("#style-submit").click()
        style_alert = page.locator("#style-error .message")
        style_alert.wait_for()
        assert style_alert.inner_text() == f"Size must be between {limits['min']} and {limits['max']} px."
        assert page.locator("#style-size").get_attribute("aria-invalid") == "true"
        assert page.locator("#style-estimate").inner_text() == ""  # no estimate for a job that cannot run
        shot(page.locator("#style"), "error-style-size")
        # next action: correcting the size clears the error at once, and the job then succeeds with none shown
        page.locator("#style-size").fill(str(limits["min"]))
        assert page.locator("#style-error").inner_text() == ""
        page.locator("#style-submit").click()
        page.wait_for_selector("#style-download:not([hidden])", timeout=JOB_TIMEOUT_MS)
        assert page.locator("#style-error").inner_text() == ""


def test_validation_errors_from_the_server_are_sentences(browser, server, photo):
    """Sent as curl would (no page-side check): the server's 422 is explained the same way."""
    with open_page(browser, server) as page:
        page.set_input_files("#style-content", str(photo))
        page.locator("#style-presets input").first.wait_for(state="attached")
        message = page.evaluate("""async () => {
            const { api, explain, technicalDetail } = await import('/web/js/api.js');
            const data = new FormData();
            data.append('content', document.querySelector('#style-content').files[0]);
            data.append('style_preset', document.querySelector('#style-presets input').value);
            data.append('size', '5000');
            try { await api('/v1/style/jobs', { method: 'POST', body: data }); return null; }
            catch (err) { return [explain(err, {}), technicalDetail(err)]; }
        }""")
        assert message[0] == "Size must be at most 1024 px."
        assert message[1].startswith("HTTP 422: body size: Input should be less than or equal to 1024")
        # and through the page: more reviews than a batch takes, typed as a person would paste them
        most = Settings().max_batch_items
        page.locator("#sentiment-batch").fill("\n".join(f"review number {i}" for i in range(most + 6)))
        page.locator("#sentiment-batch-go").click()
        alert = page.locator("#sentiment-batch-error .message")
        alert.wait_for()
        assert alert.inner_text() == f"At most {most} reviews can be classified at once; there are {most + 6}."
        page.locator("#sentiment-batch").fill("a delight")  # the next action: the error goes, the answer comes
        assert page.locator("#sentiment-batch-error").inner_text() == ""
        page.locator("#sentiment-batch-results li").first.wait_for()


# ------------------------------------------------------------------------------------------------ lost connection

def test_lost_connection_shows_and_recovers_by_itself(browser, server, photo):
    with open_page(browser, server) as page:
        # every connection state the page goes through, in order
        page.evaluate("""() => { window.connectionStates = [];
            new MutationObserver(() => { const s = document.querySelector('#style-job').dataset.connection;
                if (s && window.connectionStates.at(-1) !== s) window.connectionStates.push(s); })
            .observe(document.querySelector('#style-job'), { attributes: true, attributeFilter: ['data-connection'] }); }""")
        submit_style(page, photo, size=64, steps=2000)
        page.wait_for_function("document.querySelector('#style-job').dataset.connection === 'live'"
                               " && document.querySelector('#style-progress').value > 0.01", timeout=JOB_TIMEOUT_MS)
        before = step_shown(page)
        assert before > 0

        server.kill()  # the server goes away mid-job
        page.wait_for_function("document.querySelector('#style-job').dataset.connection === 'lost'", timeout=15_000)
        banner = page.locator("#style-connection")
        assert banner.is_visible() and "Connection to the server lost" in banner.inner_text()
        assert page.locator("#style-status").inner_text().startswith("Last known: Job running: step ")
        shot(page.locator("#style"), "connection-lost")
        time.sleep(3)  # still trying, still saying so
        assert page.locator("#style-job").get_attribute("data-connection") == "lost"

        server.start()  # same port, same jobs database: the job was re-queued and runs again
        page.wait_for_function("document.querySelector('#style-job').dataset.connection === 'live'",
                               timeout=RESTART_TIMEOUT_MS)
        states = page.evaluate("window.connectionStates")
        assert states[0] == "live" and "lost" in states and states[-1] == "live", states
        assert not page.locator("#style-status").inner_text().startswith("Last known")
        if banner.is_visible():
            assert banner.inner_text() == "Reconnected."
        # progress moves again through the re-opened stream
        page.wait_for_function("document.querySelector('#style-job').dataset.status === 'running'"
                               " && /step [1-9]/.test(document.querySelector('#style-status').textContent)",
                               timeout=JOB_TIMEOUT_MS)
        shot(page.locator("#style"), "connection-recovered")
        cancel_job(page)


def test_a_dying_event_stream_is_reopened(browser, server, photo):
    """The first stream the page opens ends at once (a proxy cutting it): the page opens it again, no polling."""
    with open_page(browser, server) as page:
        streams: list[str] = []

        def cut_first(route):
            streams.append(route.request.url)
            if len(streams) == 1:
                route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=": cut\n\n")
            else:
                route.continue_()

        page.context.route("**/events", cut_first)
        page.evaluate("""() => { window.connectionStates = [];
            new MutationObserver(() => { const s = document.querySelector('#style-job').dataset.connection;
                if (s && window.connectionStates.at(-1) !== s) window.connectionStates.push(s); })
            .observe(document.querySelector('#style-job'), { attributes: true, attributeFilter: ['data-connection'] }); }""")
        submit_style(page, photo, size=64, steps=2000)
        page.wait_for_function("/step [1-9]/.test(document.querySelector('#style-status').textContent)",
                               timeout=JOB_TIMEOUT_MS)
        assert len(streams) >= 2 and len(set(streams)) == 1, streams
        assert "polling" not in page.evaluate("window.connectionStates")
        assert page.locator("#style-job").get_attribute("data-connection") == "live"
        cancel_job(page)


def test_a_blocked_event_stream_falls_back_to_polling(browser, server, photo):
    with open_page(browser, server) as page:
        page.context.route("**/events", lambda route: route.abort())  # a proxy that breaks server-sent events
        submit_style(page, photo, size=64, steps=2000)
        job = page.locator("#style-job")
        page.wait_for_function("document.querySelector('#style-job').dataset.connection === 'polling'",
                               timeout=JOB_TIMEOUT_MS)
        page.wait_for_function("/step [1-9]/.test(document.querySelector('#style-status').textContent)",
                               timeout=JOB_TIMEOUT_MS)
        first = step_shown(page)
        page.wait_for_function(f"(() => {{ const m = document.querySelector('#style-status').textContent"
                               f".match(/step (\\d+) of/); return m && +m[1] > {first}; }})()", timeout=JOB_TIMEOUT_MS)
        assert job.get_attribute("data-connection") == "polling"
        page.context.unroute("**/events")
        page.wait_for_function("document.querySelector('#style-job').dataset.connection === 'live'", timeout=30_000)
        cancel_job(page)


def test_a_server_restart_is_announced_and_the_job_resumes_when_it_is_back(browser, server, photo):
    """SIGTERM mid-job: the stream's last event is `shutdown`; the page says the server is restarting (not that the
    connection is lost), keeps asking calmly while it is down, and follows the job again, running, once it is back."""
    with open_page(browser, server) as page:
        watch_connection_states(page)
        submit_style(page, photo, size=64, steps=2000)
        page.wait_for_function("document.querySelector('#style-job').dataset.connection === 'live'"
                               " && document.querySelector('#style-progress').value > 0.01", timeout=JOB_TIMEOUT_MS)
        job_id = page.evaluate("JSON.parse(localStorage.getItem('model-server.style-jobs'))[0].id")
        assert step_shown(page) > 0

        server.stop()  # SIGTERM, as a deployment restarting the server sends it; waits until the process is gone
        page.wait_for_function("document.querySelector('#style-job').dataset.connection === 'restarting'",
                               timeout=15_000)
        banner = page.locator("#style-connection")
        assert banner.is_visible()
        assert banner.inner_text() == "The server is restarting; the job continues when it is back…"
        assert page.locator("#style-status").inner_text().startswith("Last known: Job running: step ")
        shot(page.locator("#style"), "server-restarting")
        time.sleep(7)  # two of its calm tries fail meanwhile (connection refused): still a restart, not a loss
        assert page.locator("#style-job").get_attribute("data-connection") == "restarting"
        assert banner.inner_text() == "The server is restarting; the job continues when it is back…"

        server.start()  # same port, same jobs database: the job was handed back to the queue and runs again
        page.wait_for_function("document.querySelector('#style-job').dataset.connection === 'live'",
                               timeout=RESTART_TIMEOUT_MS)
        states = page.evaluate("window.connectionStates")
        assert states[0] == "live" and "restarting" in states and states[-1] == "live", states
        assert "lost" not in states, states
        assert not page.locator("#style-status").inner_text().startswith("Last known")
        if banner.is_visible():
            assert banner.inner_text() == "Reconnected."
        # the same job, running again, its progress arriving through the re-opened stream
        page.wait_for_function("document.querySelector('#style-job').dataset.status === 'running'"
                               " && /step [1-9]/.test(document.querySelector('#style-status').textContent)",
                               timeout=JOB_TIMEOUT_MS)
        first = step_shown(page)
        page.wait_for_function(f"(() => {{ const m = document.querySelector('#style-status').textContent"
                               f".match(/step (\\d+) of/); return m && +m[1] > {first}; }})()", timeout=JOB_TIMEOUT_MS)
        job = httpx.get(f"{server.url}/v1/style/jobs/{job_id}", timeout=10).json()
        assert job["status"] == "running", job
        shot(page.locator("#style"), "server-restarted")
        cancel_job(page)


# ------------------------------------------------------------------------------------------------ refusals

def test_refusals_only_the_server_can_explain_are_shown_in_its_words(browser, server, photo):
    """A job within every field's range but over MAX_JOB_PIXEL_STEPS (422), and a job whose event streams are all
    taken (STREAMS_PER_JOB, 429): the page shows the server's own sentence, not a guess, and for the streams follows
    the job by polling, going back to its stream once one is free."""
    opts = style_options(server)
    size, steps = opts["limits"]["size"]["max"], opts["limits"]["steps"]["max"]
    preset = httpx.get(f"{server.url}/v1/style/presets", timeout=10).json()["presets"][0]["name"]
    form = {"style_preset": preset, "size": str(size), "steps": str(steps)}
    costly = httpx.post(f"{server.url}/v1/style/jobs", data=form, timeout=30,
                        files={"content": (photo.name, photo.read_bytes(), "image/png")})
    assert costly.status_code == 422 and "MAX_JOB_PIXEL_STEPS" in costly.text, costly.text
    with open_page(browser, server) as page:
        page.locator("#style-presets input").first.wait_for(state="attached")
        page.set_input_files("#style-content", str(photo))
        page.locator("#style-size").fill(str(size))
        page.locator("#style-steps").fill(str(steps))
        # before anything is sent, the estimate already says the server would refuse it, and why
        page.wait_for_function("/would refuse this job/.test(document.querySelector('#style-estimate').textContent)")
        assert "MAX_JOB_PIXEL_STEPS" in page.locator("#style-estimate").inner_text()
        page.locator("#style-submit").click()
        alert = page.locator("#style-error .message")
        alert.wait_for()
        assert alert.inner_text() == as_sentence(costly.json()["errors"][0]["msg"])
        assert page.locator("#style-job").is_hidden()
        shot(page.locator("#style-form"), "refusal-job-cost")

    # a running job whose every event stream is taken (held open here, as many browser tabs would)
    job = httpx.post(f"{server.url}/v1/style/jobs", data={**form, "size": "64"}, timeout=30,
                     files={"content": (photo.name, photo.read_bytes(), "image/png")}).json()
    events = f"{server.url}/v1/style/jobs/{job['id']}/events"
    per_job = Settings().streams_per_job
    with ExitStack() as streams, httpx.Client(timeout=30, limits=httpx.Limits(max_connections=per_job + 4)) as http:
        for _ in range(per_job):
            assert streams.enter_context(http.stream("GET", events)).status_code == 200
        refused = http.get(events)
        assert refused.status_code == 429 and "STREAMS_PER_JOB" in refused.text, refused.text
        with open_page(browser, server) as page:
            page.evaluate(f"localStorage.setItem('model-server.style-jobs', JSON.stringify("
                          f"[{{id: '{job['id']}', status: 'queued', label: 'a job with every stream taken'}}]))")
            page.reload()  # the page follows the newest unfinished job of its history
            page.wait_for_selector("body[data-ready=true]")
            note = page.locator("#style-connection")
            page.wait_for_function("document.querySelector('#style-connection').classList.contains('info')"
                                   " && !document.querySelector('#style-connection').hidden")
            assert note.inner_text() == (as_sentence(refused.json()["detail"])
                                         + " This page follows the job by asking the server every few seconds instead.")
            assert page.locator("#style-job").get_attribute("data-connection") == "polling"
            page.wait_for_function("/step [1-9]/.test(document.querySelector('#style-status').textContent)",
                                   timeout=JOB_TIMEOUT_MS)  # followed all the same
            shot(page.locator("#style"), "refusal-streams-429")
            streams.close()  # the other tabs close: the page's next try of the stream gets one
            page.wait_for_function("document.querySelector('#style-job').dataset.connection === 'live'",
                                   timeout=30_000)
            assert note.is_hidden()
            cancel_job(page)


def test_a_keys_queue_cap_is_shown_in_the_servers_words(browser, tiny_weights_dir, tmp_path_factory, photo):
    """With API_KEYS, a key past MAX_QUEUED_JOBS_PER_OWNER is answered 429 naming that cap (not "the queue is
    full", which is the whole queue's cap); sent with a key as a proxy in front of the page would add it."""
    own = Server(tmp_path_factory.mktemp("web-truth-keys"), WEIGHTS_DIR=str(tiny_weights_dir), JOB_WORKERS="0",
                 API_KEYS="alice:alice-key", MAX_QUEUED_JOBS_PER_OWNER="1")
    own.start()
    try:
        with open_page(browser, own) as page:
            page.set_input_files("#style-content", str(photo))
            answers = page.evaluate("""async () => {
                const { api, explain, technicalDetail } = await import('/web/js/api.js');
                const submit = async () => {
                    const data = new FormData();
                    data.append('content', document.querySelector('#style-content').files[0]);
                    data.append('style_preset', 'starry_night');
                    data.append('size', '64');
                    try { return await api('/v1/style/jobs', { method: 'POST', body: data,
                                                               headers: { 'X-API-Key': 'alice-key' } }); }
                    catch (err) { return { status: err.status, explained: explain(err), detail: err.detail }; }
                };
                return [await submit(), await submit()];
            }""")
        queued, refused = answers
        assert queued["status"] == "queued", queued
        assert refused["status"] == 429, refused
        assert "MAX_QUEUED_JOBS_PER_OWNER=1" in refused["detail"]
        assert refused["explained"] == as_sentence(refused["detail"])
        assert refused["explained"].startswith("You have 1 style jobs waiting, the most one API key may queue")
    finally:
        own.stop()


# ------------------------------------------------------------------------------------------------ estimates

def test_estimate_before_a_long_job_and_eta_while_it_runs(browser, server, photo):
    opts = style_options(server)
    with open_page(browser, server) as page:
        estimate = page.locator("#style-estimate")
        page.wait_for_selector("#style-form[data-options=api]")
        size = opts["limits"]["size"]["max"]
        steps = min(opts["limits"]["steps"]["max"], opts["max_job_pixel_steps"] // size**2)  # the longest job allowed
        page.locator("#style-size").fill(str(size))
        with page.expect_response(lambda r: "/v1/style/estimate?" in r.url and f"steps={steps}" in r.url) as answer:
            page.locator("#style-steps").fill(str(steps))
        api = answer.value.json()  # what the server said, against what the page shows
        assert f"size={opts['limits']['size']['max']}" in answer.value.url
        page.wait_for_function("+document.querySelector('#style-estimate').dataset.eta > 60")
        assert float(estimate.get_attribute("data-eta")) == api["eta_s"]
        assert re.fullmatch(r"This job will take about \d+ (min|h( \d+ min)?)(, \d+ jobs? ahead of it)?\. "
                            r"Fewer steps or a smaller size are quicker\.", estimate.inner_text()), estimate.inner_text()
        shot(page.locator("#style-form"), "estimate-long-job")
        # a smaller job: a shorter estimate
        page.locator("#style-size").fill(str(opts["limits"]["size"]["min"]))
        page.wait_for_function(f"+document.querySelector('#style-estimate').dataset.eta < {api['eta_s']}")

        submit_style(page, photo, size=opts["limits"]["size"]["min"], steps=2000)
        page.wait_for_function("document.querySelector('#style-job').dataset.status === 'running'"
                               " && document.querySelector('#style-job').dataset.eta !== undefined", timeout=JOB_TIMEOUT_MS)
        assert re.search(r"^Job running: step \d+ of 2000 · (a few seconds|about \d+ (s|min)) left$", page.locator("#style-status").inner_text())
        shot(page.locator("#style-job"), "eta-running")
        cancel_job(page)


# ------------------------------------------------------------------------------------------------ defaults

def test_style_form_defaults_and_bounds_come_from_the_api(browser, server):
    opts = style_options(server)
    html = (REPO_ROOT / "app" / "web" / "index.html").read_text()
    for name in ("size", "steps", "style_weight"):  # nothing written twice: the page has no default of its own
        tag = re.search(rf'<input[^>]*name="{name}"[^>]*>', html)[0]
        assert " value=" not in tag and " min=" not in tag and " max=" not in tag, tag
    with open_page(browser, server) as page:
        page.wait_for_selector("#style-form[data-options=api]")
        for name, selector in (("size", "#style-size"), ("steps", "#style-steps"), ("style_weight", "#style-weight")):
            box = page.locator(selector)
            assert float(box.input_value()) == pytest.approx(opts["defaults"][name]), name
            for bound in ("min", "max"):  # an open bound (null) is no attribute
                value = opts["limits"].get(name, {}).get(bound)
                shown = box.get_attribute(bound)
                assert (float(shown) if shown is not None else None) == value, (name, bound)
        assert page.locator("#style-preserve").is_checked() == bool(opts["defaults"].get("preserve_color", False))
        assert page.locator("#style-upload-limit").inner_text() == f"Up to {opts['max_upload_mb']:g} MB."


# ------------------------------------------------------------------------------------------------ not sure

def test_low_confidence_answers_read_not_sure(browser, server, tmp_path):
    models = models_by_name(server)
    data = np.load(REPO_ROOT / "data" / "heldout" / "cifar-test.npz")
    _, t_objects = threshold_of(models, "objects")
    unsure = sure = None
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for i, image in enumerate(data["x"][:300]):
            path = tmp_path / f"photo-{i}.png"
            Image.fromarray(image).resize((128, 128), Image.BICUBIC).save(path)
            body = http.post("/v1/objects/predict", files={"file": (path.name, path.read_bytes(), "image/png")}).json()
            if body["score"] < t_objects and unsure is None:
                unsure = (path, body)
            elif body["score"] >= t_objects and sure is None:
                sure = (path, body)
            if unsure and sure:
                break
    assert unsure and sure, "no photo on each side of the threshold among 300"
    _, t_sentiment = threshold_of(models, "sentiment")
    sst = np.load(REPO_ROOT / "data" / "heldout" / "sst2-dev.npz", allow_pickle=True)
    texts = ["ok", "!!!", "it is a film", "the movie", "fine i guess", "so-so", *[str(t) for t in sst[sst.files[0]][:58]]]
    with httpx.Client(base_url=server.url, timeout=10) as http:
        results = http.post("/v1/sentiment/predict", json={"texts": texts}).json()["results"]
    unsure_text = next((t for t, r in zip(texts, results) if r["score"] < t_sentiment and "\n" not in t), None)
    assert unsure_text, "no review under the sentiment threshold"

    with open_page(browser, server) as page:
        result = page.locator("#object-result")
        page.set_input_files("#object-file", str(unsure[0]))
        page.wait_for_function("document.querySelector('#object-result').dataset.confidence !== undefined")
        label, score = unsure[1]["label"], unsure[1]["score"]
        article = "an" if label[0] in "aeiou" else "a"
        assert result.inner_text() == f"Not sure: maybe {article} {label} ({int(score * 100)} %)"  # rounded down
        assert result.get_attribute("data-confidence") == "low"
        shot(page.locator("#objects"), "not-sure-objects")
        page.set_input_files("#object-file", str(sure[0]))
        page.wait_for_function("document.querySelector('#object-result').dataset.confidence === 'high'")
        assert result.inner_text().startswith(f"Most likely {sure[1]['label']} (")

        page.locator("#sentiment-text").press_sequentially(unsure_text, delay=2)
        page.wait_for_function("document.querySelector('#sentiment-result').dataset.confidence === 'low'")
        assert re.fullmatch(r"Not sure: maybe (positive|negative) \(\d+ %\)", page.locator("#sentiment-result").inner_text())
        shot(page.locator("#sentiment"), "not-sure-sentiment")

        # digits: shapes that are no digit at all; each answer is shown as sure or not as its score says. The MLP,
        # which has seen less of the world than the CNN, is the one unsure of them (the CNN reads a square as a
        # sure 0, which it may well be).
        page.select_option("#digit-model", "digits-mlp")
        t_digits = float(models["digits-mlp"]["calibration"]["low_confidence_below"])
        seen_unsure = False
        shapes = [[[(0.2, 0.5), (0.8, 0.5)]],  # a dash
                  [[(0.3, 0.3), (0.7, 0.7)], [(0.7, 0.3), (0.3, 0.7)]],  # a cross
                  [[(0.2, 0.2), (0.8, 0.2), (0.8, 0.8), (0.2, 0.8), (0.2, 0.2)]],  # a square
                  [[(0.5, 0.2), (0.8, 0.8), (0.2, 0.8), (0.5, 0.2)]],  # a triangle
                  [[(0.35, 0.2), (0.35, 0.8)], [(0.65, 0.2), (0.65, 0.8)],
                   [(0.2, 0.4), (0.8, 0.4)], [(0.2, 0.6), (0.8, 0.6)]]]  # a hash sign
        for shape in shapes:
            page.locator("#digit-clear").click()
            draw(page, shape)
            page.wait_for_function("document.querySelector('#digit-result').dataset.confidence !== undefined")
            text = page.locator("#digit-result").inner_text()
            shown = float(re.search(r"\((\d+(?:\.\d)?) %", text)[1])  # rounded as shown: 41 % or 97.3 %
            low = page.locator("#digit-result").get_attribute("data-confidence") == "low"
            if low:
                assert shown <= t_digits * 100 + 0.5, (text, t_digits)
            else:
                assert shown >= t_digits * 100 - 0.05, (text, t_digits)
            if low:
                assert re.fullmatch(r"Not sure: maybe an? \d \(\d+ %\), digits-\w+", text), text
                seen_unsure = True
                shot(page.locator("#digits"), "not-sure-digits")
        assert seen_unsure, "none of the non-digit shapes was shown as not sure"


# ------------------------------------------------------------------------------------------------ phone

def test_phone_layout_375px_nothing_cut_off(browser, server, photo):
    with open_page(browser, server, width=375, height=812, is_mobile=True, has_touch=True) as page:
        page.locator("#models-body tr").nth(3).wait_for()
        page.locator("#style-presets input").first.wait_for(state="attached")
        # an error with its details open, so that the longest words are on screen too
        page.set_input_files("#object-file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"x"}])
        page.locator("#object-error .message").wait_for()
        page.locator("#object-error summary").tap()
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        # no visible element reaches past the screen's right edge
        over = page.evaluate("""() => [...document.querySelectorAll('body *')].filter(el => {
            const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0 && r.right > 375.5; })
            .map(el => el.id || el.tagName + '.' + el.className)""")
        assert over == [], over
        # each label stays on the line of its input
        for label, box in (("label[for=style-size]", "#style-size"), ("label[for=style-steps]", "#style-steps"),
                           ("label[for=digit-model]", "#digit-model")):
            a, b = page.locator(label).bounding_box(), page.locator(box).bounding_box()
            assert a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"], (label, a, b)
            assert a["x"] + a["width"] <= b["x"], (label, a, b)
        # the models: every value of every model visible, none scrolled out of sight
        wrap = page.locator(".table-wrap")
        assert wrap.evaluate("w => w.scrollWidth <= w.clientWidth")
        cells = page.locator("#models-body td")
        assert cells.count() == 4 * 7
        for i in range(cells.count()):
            r = cells.nth(i).bounding_box()
            assert r["x"] >= 0 and r["x"] + r["width"] <= 375, (cells.nth(i).inner_text(), r)
        page.locator("#style").scroll_into_view_if_needed()
        shot(page.locator("#style"), "phone-style")
        shot(page.locator("#models"), "phone-models")
        shot(page, "phone-full", full=True)
