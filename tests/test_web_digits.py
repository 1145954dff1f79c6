"""Digits drawn with the mouse on the page's canvas in Chromium, small, normal and running off the edges.

Each MNIST test digit (the first of each class) is traced onto the canvas the way a person fills in a shape: one
mouse drag along every run of ink in the digit's rows, as many rows as the page's brush needs to leave no gaps. The page posts the
canvas to the server after each stroke; no drawing may be refused, and the digits must be read right.
"""
import numpy as np
import pytest

from tests.test_e2e import REPO_ROOT, running_server
from tests.test_web import ARTIFACTS, TIMEOUT_MS, browser  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow

# (name, digit height as a share of the canvas, vertical offset of the digit's top as a share of the canvas)
SIZES = [("small", 0.3, 0.35), ("normal", 0.7, 0.15), ("edge", 1.12, -0.06)]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    with running_server(REPO_ROOT / "weights", tmp_path_factory.mktemp("web-digits"), DEVICE="cpu",
                        JOB_WORKERS="0") as (_, url, _):
        yield url


@pytest.fixture(scope="module")
def page(browser, base_url):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(base_url=base_url, viewport={"width": 1100, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto("/")
    page.wait_for_selector("body[data-ready=true]")
    yield page
    context.close()


def first_of_each_class() -> list[tuple[int, np.ndarray]]:
    with np.load(REPO_ROOT / "data" / "heldout" / "mnist-test.npz") as npz:
        x, y = npz["x"], npz["y"]
    return [(d, x[int(np.flatnonzero(y == d)[0])]) for d in range(10)]


def ink_runs(digit: np.ndarray, step: int) -> list[tuple[int, int, int]]:
    """(row, first column, last column) of each run of ink in every `step`-th row of the digit's ink box."""
    ink = digit > 100
    rows = np.flatnonzero(ink.any(axis=1))
    runs = []
    for r in range(rows[0], rows[-1] + 1, step):
        cols = np.flatnonzero(ink[r])
        if cols.size:
            breaks = np.flatnonzero(np.diff(cols) > 1)
            for start, stop_ in zip(np.r_[cols[0], cols[breaks + 1]], np.r_[cols[breaks], cols[-1]]):
                runs.append((int(r), int(start), int(stop_)))
    return runs


def trace(page, digit: np.ndarray, height: float, top: float) -> None:
    """Drag the mouse along the digit's ink runs, the digit scaled to `height` of the canvas, centred across."""
    canvas = page.locator("#digit-canvas")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    ink = np.argwhere(digit > 100)
    (r0, c0), (r1, c1) = ink.min(axis=0), ink.max(axis=0)
    px = height * box["height"] / (r1 - r0 + 1)  # screen pixels per MNIST pixel
    brush = box["width"] / 14  # the page's line width (canvas.width / 14), in screen pixels
    left = box["x"] + (box["width"] - (c1 - c0 + 1) * px) / 2
    for row, start, end in ink_runs(digit, step=max(1, int(0.8 * brush / px))):
        y = box["y"] + top * box["height"] + (row - r0 + 0.5) * px
        page.mouse.move(left + (start - c0 + 0.5) * px, y)
        page.mouse.down()
        page.mouse.move(left + (end - c0 + 0.5) * px + 0.01, y, steps=4)
        page.mouse.up()


def read_answer(page) -> tuple[str | None, str]:
    """The label the page shows after the last stroke, or None with the error text if it shows an error."""
    page.wait_for_function("""() => {
        const r = document.querySelector('#digit-result'), e = document.querySelector('#digit-error');
        return r.dataset.label !== undefined || e.textContent.trim() !== '';
    }""")
    page.wait_for_timeout(400)  # a later stroke's answer replaces an earlier one: let the last one land
    page.wait_for_function("() => document.querySelector('#digit-result').dataset.label !== undefined"
                           " || document.querySelector('#digit-error').textContent.trim() !== ''")
    error = page.locator("#digit-error").inner_text().strip()
    label = page.evaluate("() => document.querySelector('#digit-result').dataset.label ?? null")
    return (None if error else label), error


@pytest.mark.parametrize("size,height,top", SIZES, ids=[s[0] for s in SIZES])
def test_drawn_digits_are_read_and_never_refused(page, size, height, top):
    refused, wrong = [], []
    for truth, digit in first_of_each_class():
        page.click("#digit-clear")
        trace(page, digit, height, top)
        label, error = read_answer(page)
        if label is None:
            refused.append((truth, error))
        elif label != str(truth):
            wrong.append((truth, label))
        page.screenshot(path=str(ARTIFACTS / f"drawn-{size}-{truth}.png"), clip=page.locator("#digit-canvas")
                        .bounding_box())
    assert not refused, f"{size} digits refused: {refused}"
    assert len(wrong) <= 1, f"{size} digits misread (truth, read): {wrong}"
