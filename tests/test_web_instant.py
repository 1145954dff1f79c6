"""The page's instant preview in a real browser: choosing a photo and a painting shows the instant result
(POST /v1/style/instant) at once, and a submitted job's own preview replaces it.

Same set-up as tests/test_web.py (Debian's chromium driven by Playwright, a real uvicorn over the committed weights);
screenshots in test-artifacts/web/.
"""
import pytest

from tests.test_e2e import REPO_ROOT
from tests.test_style_instant import decoder_listed
from tests.test_web import JOB_TIMEOUT_MS, base_url, browser, page, shot  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not decoder_listed(), reason="no style-decoder in weights/")]
PHOTO = REPO_ROOT / "data" / "style" / "chelsea.png"
PAINTING = REPO_ROOT / "data" / "style" / "the_scream.jpg"

READY = "document.querySelector('#style-instant').dataset.state === 'ready'"
SHOWN = ("(() => { const i = document.querySelector('#style-instant-img');"
         " return !i.hidden && i.complete && i.naturalWidth > 0; })()")


def test_instant_preview_then_the_job_s_preview_replaces_it(page):
    page.locator("#style-presets input").first.wait_for(state="attached")
    page.fill("#style-size", "64")
    page.set_input_files("#style-content", str(PHOTO))
    page.wait_for_function(READY)  # the first preset is chosen by default: a result at once
    page.wait_for_function(SHOWN)
    assert page.locator("#style-instant-img").evaluate("i => i.naturalWidth") == 64
    assert "Instant preview" in page.locator("#style-instant-note").inner_text()
    first = page.locator("#style-instant-img").get_attribute("src")

    # another painting: another instant result
    page.locator("#style-presets label").nth(2).click()
    page.wait_for_function(f"document.querySelector('#style-instant-img').src !== {first!r} && {READY}")
    # an uploaded painting too
    page.set_input_files("#style-upload", str(PAINTING))
    second = page.locator("#style-instant-img").get_attribute("src")
    page.wait_for_function(f"document.querySelector('#style-instant-img').src !== {second!r} && {READY}")
    page.locator("#style-instant").scroll_into_view_if_needed()
    shot(page, "style-instant")
    assert page.locator("#style-error").inner_text() == ""

    # a job: the instant result stays until the job's own preview arrives, then gives way to it
    page.fill("#style-steps", "60")
    page.click("#style-submit")
    page.wait_for_function("document.querySelector('#style-instant').dataset.state === 'replaced'",
                           timeout=JOB_TIMEOUT_MS)
    assert page.locator("#style-instant").is_hidden()
    assert page.locator("#style-preview").is_visible()
    page.click("#style-cancel")
    page.wait_for_function("document.querySelector('#style-job').dataset.status === 'cancelled'")


def test_instant_failures_are_a_note_not_the_form_s_error(page):
    page.fill("#style-size", "64")
    page.set_input_files("#style-upload", {"name": "notes.png", "mimeType": "image/png", "buffer": b"not a picture"})
    page.wait_for_function("document.querySelector('#style-instant').dataset.state === 'failed'")
    note = page.locator("#style-instant-note").inner_text()
    assert note.startswith("No instant preview:") and len(note) > len("No instant preview: "), note
    assert page.locator("#style-error").inner_text() == ""
