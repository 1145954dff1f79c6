"""The web front end in a real browser (Debian's chromium driven by Playwright) against a real uvicorn serving
the committed weights: draw a digit, classify a photo, type a review, run and cancel style jobs, see an error.

Screenshots go to test-artifacts/web/ (gitignored); the final full page is copied to docs/web.png when that is
missing or UPDATE_WEB_SCREENSHOT=1.
Needs `pip install playwright` and `apt-get install chromium`; without them these tests fail, they do not skip.
"""
import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from models.objects import CIFAR10_CLASSES
from tests.test_e2e import REPO_ROOT, free_port, server_command, stop, wait_until_ready

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "web"
TIMEOUT_MS = 15_000  # any single UI wait
JOB_TIMEOUT_MS = 180_000  # a tiny style job, worker start-up included (generous: the CI machine has 2 shared cores)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("web")
    log_path = tmp / "server.log"
    env = {**os.environ, "WEIGHTS_DIR": str(REPO_ROOT / "weights"), "DATA_DIR": str(tmp / "data"),
           "DEVICE": "cpu", "JOB_WORKERS": "1"}
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(server_command(port), cwd=REPO_ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(process, url, log_path)
        yield url
    finally:
        stop(process)


@pytest.fixture(scope="module")
def photo(base_url, tmp_path_factory) -> tuple[Path, str]:
    """A held-out CIFAR-10 test image the model gets right (asked through the API), upscaled to a 128x128 PNG."""
    data = np.load(REPO_ROOT / "data" / "heldout" / "cifar-test.npz")
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    with httpx.Client(base_url=base_url, timeout=10) as http:
        for image, label in zip(data["x"][:50], data["y"][:50]):
            Image.fromarray(image).resize((128, 128), Image.BICUBIC).save(path)
            body = http.post("/v1/objects/predict", files={"file": ("photo.png", path.read_bytes(), "image/png")}).json()
            if body["label"] == CIFAR10_CLASSES[int(label)] and body["score"] > 0.8:
                return path, body["label"]
    raise AssertionError("no confidently and correctly classified photo among the first 50")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright  # ImportError = a failure: `make test` installs it
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: apt-get install chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser, base_url):
    """One page for the whole module, so the last screenshot shows every section filled in."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(base_url=base_url, viewport={"width": 1100, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    # Nothing may be fetched from outside: any request off the test server fails the test.
    outside = []
    context.route("**/*", lambda route: (route.continue_() if route.request.url.startswith(base_url)
                                         else (outside.append(route.request.url), route.abort())))
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto("/")
    page.wait_for_selector("body[data-ready=true]")
    yield page
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"
    assert not outside, f"the page fetched from outside: {outside}"


def shot(page, name: str, full: bool = False) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full)
    return path


def draw(page, strokes: list[list[tuple[float, float]]]) -> None:
    """Draw on the digit canvas with the mouse; points are fractions of its width and height."""
    canvas = page.locator("#digit-canvas")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    for stroke in strokes:
        x, y = stroke[0]
        page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=8)
        page.mouse.up()


def test_page_served_and_models_panel(page, base_url):
    assert httpx.get(f"{base_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{base_url}/docs").status_code == 200
    row = page.locator("#models-body tr[data-model=digits-cnn]")
    accuracy = json.loads((REPO_ROOT / "weights" / "manifest.json").read_text())["models"]["digits-cnn"]["metrics"]["accuracy"]
    assert f"{100 * accuracy:.2f} %" in row.inner_text() and "MNIST" in row.inner_text() and "cpu" in row.inner_text()
    assert page.locator("#models-body tr").count() == 4
    options = page.locator("#digit-model option")
    assert sorted(options.evaluate_all("os => os.map(o => o.value)")) == ["digits-cnn", "digits-mlp"]
    # every form control has an accessible name
    unnamed = page.evaluate("""() => [...document.querySelectorAll('input:not([type=radio]), select, textarea, button')]
        .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim())
        .map(el => el.id)""")
    assert unnamed == []


def test_draw_digits(page):
    label = page.locator("#digit-result")
    # a "7": the top bar, then the diagonal down to the bottom
    draw(page, [[(0.25, 0.22), (0.75, 0.22), (0.45, 0.85)]])
    page.wait_for_function("document.querySelector('#digit-result').dataset.label !== undefined")
    assert page.locator("#digit-label").inner_text() == "7", label.inner_text()
    assert page.locator("#digit-bars li").count() == 10
    shot(page, "digits-7")
    # the same drawing through the MLP, then a "1" after clearing
    page.select_option("#digit-model", "digits-mlp")
    page.wait_for_function("document.querySelector('#digit-result').textContent.includes('digits-mlp')")
    assert page.locator("#digit-label").inner_text() == "7"
    page.click("#digit-clear")
    assert page.locator("#digit-bars li").count() == 0
    page.select_option("#digit-model", "digits-cnn")
    draw(page, [[(0.5, 0.15), (0.5, 0.5), (0.5, 0.85)]])
    page.wait_for_function("document.querySelector('#digit-label')?.textContent === '1'")
    assert "digits-cnn" in label.inner_text()


def test_classify_photo(page, photo):
    path, expected = photo
    page.set_input_files("#object-file", str(path))
    page.wait_for_selector("#object-label")
    assert page.locator("#object-label").inner_text() == expected
    assert page.locator("#object-bars li").count() == 3
    assert page.locator("#object-thumb").evaluate("img => img.complete && img.naturalWidth") == 128
    shot(page, "objects")


def test_non_image_shows_readable_error(page, photo):
    page.set_input_files("#object-file", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                                 "buffer": b"this is not a picture"}])
    alert = page.locator("#object-error[role=alert]")
    alert.locator(".message").wait_for()  # a sentence for people; the API's own words under "Details"
    assert alert.locator(".message").inner_text() == \
        "This file is not a picture the server can read. Use a PNG, JPEG, GIF, BMP or WebP image."
    assert alert.locator("details code").text_content().startswith("HTTP 415: ")
    assert page.locator("#object-bars li").count() == 0
    shot(page, "objects-error")
    # a good photo clears the error again
    page.set_input_files("#object-file", str(photo[0]))
    page.wait_for_selector("#object-label")
    assert alert.inner_text() == ""


def test_sentiment_as_you_type(page):
    page.locator("#sentiment-text").press_sequentially("a wonderful , moving film", delay=5)
    page.wait_for_function("document.querySelector('#sentiment-result').dataset.label === 'positive'")
    page.locator("#sentiment-text").fill("")
    page.locator("#sentiment-text").press_sequentially("dull , lifeless and far too long", delay=5)
    page.wait_for_function("document.querySelector('#sentiment-result').dataset.label === 'negative'")
    page.fill("#sentiment-batch", "a wonderful , moving film\ndull , lifeless and far too long\n\na delight")
    page.click("#sentiment-batch-go")
    items = page.locator("#sentiment-batch-results li")
    items.nth(2).wait_for()
    assert items.evaluate_all("lis => lis.map(li => li.dataset.label)") == ["positive", "negative", "positive"]
    shot(page, "sentiment")


def submit_style(page, photo_path: Path, steps: int, size: int = 64) -> None:
    page.set_input_files("#style-content", str(photo_path))
    page.fill("#style-size", str(size))
    page.fill("#style-steps", str(steps))
    page.click("#style-submit")


def test_style_job_runs_to_a_result_and_survives_a_reload(page, photo):
    page.locator("#style-presets input").first.wait_for(state="attached")
    assert page.locator("#style-presets img").first.evaluate("img => img.complete && img.naturalWidth > 0")
    submit_style(page, photo[0], steps=5)
    page.wait_for_selector("#style-download:not([hidden])", timeout=JOB_TIMEOUT_MS)
    assert page.locator("#style-job").get_attribute("data-status") == "succeeded"
    assert page.locator("#style-progress").evaluate("p => p.value") == 1
    page.wait_for_function("(() => { const i = document.querySelector('#style-preview');"
                           " return !i.hidden && i.complete && i.naturalWidth === 64; })()")
    href = page.locator("#style-download").get_attribute("href")
    assert href.endswith("/result")
    png = page.request.get(href)
    assert png.ok and png.headers["content-type"] == "image/png"
    shot(page, "style-done")
    history = page.locator("#style-history li[data-status=succeeded]")
    assert history.count() == 1
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert history.count() == 1 and history.locator("a", has_text="result").count() == 1


def test_style_job_cancel(page, photo):
    submit_style(page, photo[0], steps=2000)
    page.wait_for_function("document.querySelector('#style-progress').value > 0", timeout=JOB_TIMEOUT_MS)
    # the preview of the running job, fetched as its progress events arrive
    page.wait_for_function("(() => { const i = document.querySelector('#style-preview');"
                           " return !i.hidden && i.src.includes('/preview') && i.naturalWidth === 64; })()")
    page.click("#style-cancel")
    page.wait_for_function("document.querySelector('#style-job').dataset.status === 'cancelled'")
    assert page.locator("#style-download").is_hidden()
    assert page.locator("#style-history li").first.get_attribute("data-status") == "cancelled"
    assert page.locator("#style-cancel").is_disabled()


def test_full_page_and_phone_screenshots(page, browser, base_url, photo):
    # leave the page looking used for the README picture: a digit, a photo, a review, a finished style job
    draw(page, [[(0.25, 0.22), (0.75, 0.22), (0.45, 0.85)]])
    page.set_input_files("#object-file", str(photo[0]))
    page.locator("#sentiment-text").fill("a wonderful , moving film")
    page.locator("#sentiment-text").press("End")
    page.locator("#sentiment-text").press_sequentially(" !")
    page.wait_for_function("document.querySelector('#sentiment-result').dataset.label === 'positive'")
    page.fill("#sentiment-batch", "dull , lifeless and far too long\na delight")
    page.click("#sentiment-batch-go")
    page.locator("#sentiment-batch-results li").nth(1).wait_for()
    submit_style(page, photo[0], steps=40, size=128)
    page.wait_for_selector("#style-download:not([hidden])", timeout=JOB_TIMEOUT_MS)
    page.wait_for_function("document.querySelector('#digit-label') && document.querySelector('#object-label')")
    page.wait_for_function("document.querySelector('#style-preview').complete")
    full = shot(page, "full-page", full=True)
    readme_picture = REPO_ROOT / "docs" / "web.png"
    if not readme_picture.exists() or os.environ.get("UPDATE_WEB_SCREENSHOT") == "1":  # else the tree stays clean
        shutil.copyfile(full, readme_picture)
    phone = browser.new_context(base_url=base_url, viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                is_mobile=True, has_touch=True)
    try:
        mobile = phone.new_page()
        mobile.goto("/")
        mobile.wait_for_selector("body[data-ready=true]")
        mobile.locator("#models-body tr").nth(3).wait_for(timeout=TIMEOUT_MS)
        # nothing wider than the screen (the page does not scroll sideways)
        assert mobile.evaluate("document.documentElement.scrollWidth") <= 390
        mobile.screenshot(path=str(ARTIFACTS / "phone.png"), full_page=True)
    finally:
        phone.close()
