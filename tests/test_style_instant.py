"""POST /v1/style/instant: WCT of relu3_1 + the committed decoder, over TestClient, on real photos and paintings.

Needs the committed weights/style-decoder.pt (python -m training.decoder); skipped without it."""
import io
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.style import presets
from app.style.state import InstantState, style_state
from app.style.engine import pil_to_tensor, rgb_to_ycbcr
from tests.conftest import make_settings, wait_until_ready

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = Path(os.environ.get("TEST_STYLE_WEIGHTS", ROOT / "weights"))  # the VGG, the decoder, their manifest
SHARED = ROOT.parent / "shared" / "data" / "images"
STYLE_DIR = ROOT / "data" / "style"
SIZE = 128
MAX_UPLOAD = 4 * 1024 * 1024


def decoder_listed() -> bool:
    manifest = json.loads((WEIGHTS / "manifest.json").read_text())
    entry = (manifest.get("assets") or {}).get("style-decoder")
    return bool(entry) and (WEIGHTS / entry["file"]).is_file()


pytestmark = [pytest.mark.real_weights,
              pytest.mark.skipif(not decoder_listed(), reason="no style-decoder in weights/ (python -m "
                                                               "training.decoder)")]


def photo_bytes(name: str) -> bytes:
    """A photo from the shared data folder when there is one (else the repo's copy)."""
    for folder in (SHARED / "content", SHARED / "style", STYLE_DIR):
        path = next(iter(sorted(folder.glob(f"{name}.*"))), None) if folder.is_dir() else None
        if path is not None:
            return path.read_bytes()
    raise FileNotFoundError(name)


CHELSEA = photo_bytes("chelsea")  # held out from the decoder's training
COFFEE = photo_bytes("coffee")
SCREAM = photo_bytes("the_scream")


def png_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.convert("RGB")


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64) / 255


def psnr(a: Image.Image, b: Image.Image) -> float:
    mse = float(np.mean((as_array(a) - as_array(b)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(1 / mse)


def resized(data: bytes, size: int) -> Image.Image:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    from app.style.options import fit_size
    return image.resize(fit_size(*image.size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)


@pytest.fixture(scope="module")
def client(tiny_weights_dir, tmp_path_factory):
    settings = make_settings(tiny_weights_dir, tmp_path_factory.mktemp("instant-data"), job_workers=0,
                             max_upload_bytes=MAX_UPLOAD, style_vgg_weights=WEIGHTS / "vgg19_features_0-16.pth")
    with TestClient(create_app(settings)) as test_client:
        wait_until_ready(test_client)
        yield test_client


def instant(client, content=CHELSEA, styles=(), data=None, **fields):
    files = [("content", ("photo.png", content, "image/png"))]
    files += [("style", (f"style{i}.jpg", s, "image/jpeg")) for i, s in enumerate(styles)]
    return client.post("/v1/style/instant", files=files, data={"size": str(SIZE), **(data or {}), **fields})


def ok_png(response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert float(response.headers["x-style-seconds"]) > 0
    return png_image(response.content)


def mean_colour(image: Image.Image) -> np.ndarray:
    return as_array(image).reshape(-1, 3).mean(axis=0)


# --------------------------------------------------------------------------------------------- results

@pytest.mark.parametrize("preset", [p["name"] for p in presets.list_presets()])
def test_every_preset_styles_the_photo(client, preset):
    result = ok_png(instant(client, style_preset=preset))
    photo = resized(CHELSEA, SIZE)
    assert result.size == photo.size == (128, 85)
    painting = Image.open(presets.preset_path(preset)).convert("RGB")
    # the painting's palette arrived: the mean colour moved most of the way from the photo's to the painting's
    before = np.linalg.norm(mean_colour(photo) - mean_colour(painting))
    after = np.linalg.norm(mean_colour(result) - mean_colour(painting))
    assert after < 0.5 * before, (preset, before, after)
    # and the photo is still there: far closer to it than the painting is
    assert psnr(result, photo) > psnr(painting.resize(photo.size), photo) + 2
    styler = style_state(client.app).instant.styler()
    assert any(name == preset for name, _ in styler.cached_presets())  # computed once, then cached


def test_a_cached_preset_gives_the_same_image(client):
    first = instant(client, style_preset="udnie")
    second = instant(client, style_preset="udnie")
    assert first.content == second.content


def test_an_uploaded_painting(client):
    upload = ok_png(instant(client, content=COFFEE, styles=(SCREAM,)))
    preset = ok_png(instant(client, content=COFFEE, style_preset="the_scream"))
    assert upload.size == (128, 85)
    assert psnr(upload, preset) > 30  # the same painting, uploaded or preset: the same statistics


def test_a_blend_lies_between_its_paintings(client):
    a = as_array(ok_png(instant(client, style_preset="starry_night")))
    b = as_array(ok_png(instant(client, style_preset="udnie")))
    mix = as_array(ok_png(instant(client, data={"style_preset": "starry_night,udnie", "style_weights": "1,1"})))
    assert np.abs(mix - a).mean() < np.abs(b - a).mean() and np.abs(mix - b).mean() < np.abs(b - a).mean()


def test_alpha_zero_is_the_decoder_s_reconstruction(client):
    zero = ok_png(instant(client, style_preset="starry_night", alpha="0"))
    styler = style_state(client.app).instant.styler()
    photo = Image.open(io.BytesIO(CHELSEA)).convert("RGB")
    assert psnr(zero, styler.reconstruct(photo, SIZE)) > 45  # the same pass, up to PNG rounding
    assert psnr(zero, resized(CHELSEA, SIZE)) > 22  # and close to the photo itself
    half = as_array(ok_png(instant(client, style_preset="starry_night", alpha="0.5")))
    full = as_array(ok_png(instant(client, style_preset="starry_night", alpha="1")))
    zero_a = as_array(zero)
    assert np.abs(half - zero_a).mean() < np.abs(full - zero_a).mean()


def test_preserve_color_keeps_the_photo_s_colours(client):
    photo = pil_to_tensor(resized(CHELSEA, SIZE))
    chroma = rgb_to_ycbcr(photo)[:, 1:]

    def chroma_error(image: Image.Image) -> float:
        return float((rgb_to_ycbcr(pil_to_tensor(image))[:, 1:] - chroma).abs().mean())

    kept = ok_png(instant(client, style_preset="starry_night", preserve_color="true"))
    free = ok_png(instant(client, style_preset="starry_night"))
    assert chroma_error(kept) < 0.015 < chroma_error(free)


def test_bfloat16_gives_the_float32_image():
    from app.style.instant import InstantStyler
    weights, vgg = [WEIGHTS], [WEIGHTS / "vgg19_features_0-16.pth"]
    exact = InstantStyler.load(weights, vgg, precision="float32")
    fast = InstantStyler.load(weights, vgg, precision="bfloat16")
    photo = Image.open(io.BytesIO(COFFEE)).convert("RGB")
    images = [s.stylise(photo, [s.preset_stats("starry_night", SIZE)], [1.0], SIZE) for s in (exact, fast)]
    assert psnr(*images) > 40


def test_job_only_options_are_checked_and_named_as_ignored(client):
    response = instant(client, style_preset="udnie", steps="30", seed="4")
    ok_png(response)
    assert response.headers["x-style-ignored"] == "steps,seed"
    assert instant(client, style_preset="udnie", steps="0").status_code == 422  # a job's bounds


# --------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("fields, where", [
    ({"alpha": "2"}, "alpha"), ({"alpha": "-0.1"}, "alpha"), ({"alpha": "nan"}, "alpha"), ({"alpha": "x"}, "alpha"),
    ({"size": "10"}, "size"), ({"size": "4096"}, "size"), ({"style_preset": "mona_lisa"}, "style_preset"),
    ({"colour": "red"}, "colour"), ({"style_weights": "1,2"}, "style_weights"),
    ({"preserve_color": "maybe"}, "preserve_color"),
])
def test_bad_fields_are_422(client, fields, where):
    data = {"style_preset": "udnie", **fields}
    response = instant(client, data=data)
    assert response.status_code == 422, response.text
    assert where in json.dumps(response.json()), response.json()


def test_bad_bodies_are_answered_as_job_submits_are(client):
    no_style = instant(client)
    assert no_style.status_code == 422 and "no style" in no_style.json()["detail"]
    no_content = client.post("/v1/style/instant", data={"style_preset": "udnie"})
    assert no_content.status_code in (415, 422)
    no_content = client.post("/v1/style/instant", files=[("style", ("s.jpg", SCREAM, "image/jpeg"))])
    assert no_content.status_code == 422 and "content" in no_content.json()["detail"]
    json_body = client.post("/v1/style/instant", json={"content": "x"})
    assert json_body.status_code == 415 and "multipart/form-data" in json_body.json()["detail"]
    truncated = instant(client, content=CHELSEA[: len(CHELSEA) // 2], style_preset="udnie")
    assert truncated.status_code == 400 and truncated.json()["detail"].startswith("content:")
    not_image = instant(client, styles=(b"just some text, not an image",))
    assert not_image.status_code == 415 and "style" in not_image.json()["detail"]
    huge = instant(client, content=b"\0" * (MAX_UPLOAD + 1), style_preset="udnie")
    assert huge.status_code == 413 and "MAX_UPLOAD_BYTES" in huge.json()["detail"]
    thin = io.BytesIO()
    Image.new("RGB", (2000, 3)).save(thin, "PNG")
    too_thin = instant(client, content=thin.getvalue(), style_preset="udnie")
    assert too_thin.status_code == 422 and "elongated" in too_thin.json()["detail"]
    five = instant(client, data={"style_preset": "udnie,udnie,udnie,udnie,udnie"})
    assert five.status_code == 422 and "at most 4" in five.json()["detail"]
    settings = client.app.state.services.settings
    settings.max_image_pixels, saved = 1000, settings.max_image_pixels
    try:
        too_many_pixels = instant(client, style_preset="udnie")
    finally:
        settings.max_image_pixels = saved
    assert too_many_pixels.status_code == 413 and "pixels" in too_many_pixels.json()["detail"]


# --------------------------------------------------------------------------------------------- limits, docs

def test_busy_answers_429_with_retry_after(client):
    app = client.app
    saved = style_state(app).instant
    state = InstantState(app.state.services.settings, concurrency=1, queue=0)
    real = saved.styler()
    release, entered = threading.Event(), threading.Event()

    class Slow:
        def __getattr__(self, name):
            return getattr(real, name)

        def stylise(self, *args, **kwargs):
            entered.set()
            release.wait(30)
            return real.stylise(*args, **kwargs)

    state.styler = lambda: Slow()
    style_state(app).instant = state
    answers = []
    try:
        first = threading.Thread(target=lambda: answers.append(instant(client, style_preset="udnie")))
        first.start()
        assert entered.wait(30)
        busy = instant(client, style_preset="udnie")
        assert busy.status_code == 429 and int(busy.headers["retry-after"]) >= 1
        assert "INSTANT_STYLE_CONCURRENCY" in busy.json()["detail"]
        release.set()
        first.join(30)
        assert answers and answers[0].status_code == 200
        assert state.admitted == 0
        ok_png(instant(client, style_preset="udnie"))  # free again
    finally:
        release.set()
        style_state(app).instant = saved


def test_the_endpoint_is_in_openapi(client):
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/v1/style/instant"]["post"]
    assert "image/png" in operation["responses"]["200"]["content"]
    assert {"422", "429", "413", "415"} <= set(operation["responses"])
    fields = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert {"content", "style", "style_preset", "size", "alpha", "preserve_color"} <= set(fields)


def test_without_a_decoder_it_answers_503(tiny_weights_dir, tmp_path):
    vgg = tmp_path / "vgg" / "vgg19_features_0-16.pth"
    vgg.parent.mkdir()
    vgg.write_bytes((WEIGHTS / "vgg19_features_0-16.pth").read_bytes())
    settings = make_settings(tiny_weights_dir, tmp_path / "data", job_workers=0, style_vgg_weights=vgg)
    with TestClient(create_app(settings)) as other:
        wait_until_ready(other)
        response = instant(other, style_preset="udnie")
        assert response.status_code == 503 and "training.decoder" in response.json()["detail"]
