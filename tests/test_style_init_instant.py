"""init=instant (issue 16, item 3): a style job that starts from the instant stylisation (WCT + decoder) instead of
the photo. Engine-level checks of the start image, then a job through the API with a real worker, the 422 when
there is no decoder, and the options listing. Needs the committed weights/style-decoder.pt; skipped without it."""
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.style.engine import InstantInitUnavailable, StyleEngine, pil_to_tensor, tensor_to_pil
from app.style.instant import InstantStyler
from app.style.options import StyleParams, fit_size, schedule
from tests.conftest import make_settings, wait_until_ready

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = Path(os.environ.get("TEST_STYLE_WEIGHTS", ROOT / "weights"))
VGG = WEIGHTS / "vgg19_features_0-16.pth"
STYLE_DIR = ROOT / "data" / "style"
JOB_TIMEOUT_S = 120


def decoder_listed() -> bool:
    try:
        manifest = json.loads((WEIGHTS / "manifest.json").read_text())
    except OSError:
        return False
    entry = (manifest.get("assets") or {}).get("style-decoder")
    return bool(entry) and (WEIGHTS / entry["file"]).is_file() and VGG.is_file()


pytestmark = [pytest.mark.real_weights,
              pytest.mark.skipif(not decoder_listed(), reason="no style-decoder in weights/ (python -m "
                                                               "training.decoder)")]


def image(name: str) -> Image.Image:
    return Image.open(next(iter(sorted(STYLE_DIR.glob(f"{name}.*"))))).convert("RGB")


def as_array(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.float64) / 255


def psnr(a: Image.Image, b: Image.Image) -> float:
    mse = float(np.mean((as_array(a) - as_array(b)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(1 / mse)


@pytest.fixture(scope="module")
def engine() -> StyleEngine:
    return StyleEngine(VGG, "cpu")


def first_evaluation(engine: StyleEngine, params: StyleParams, content, styles):
    seen = {}

    def on_progress(info):
        if info.step == 1:
            seen.update(losses=info.losses, image=info.preview(), scale=info.scale_px)
    result = engine.run(content, styles, params, on_progress=on_progress)
    return seen, result


# --------------------------------------------------------------------------------------------- engine

def test_the_styler_shares_the_engine_s_vgg(engine):
    styler = engine.instant_styler()
    assert styler.vgg is engine.vgg  # not loaded a second time
    assert engine.instant_styler() is styler  # loaded once


@pytest.mark.parametrize("size, steps", [(64, 3), (128, 8)])  # one scale; coarse (64 px) then fine (128 px)
def test_the_first_evaluation_is_the_instant_result_at_the_first_stage_s_size(engine, size, steps):
    content, style = image("chelsea"), image("udnie")
    params = StyleParams(size=size, steps=steps, seed=0, init="instant")
    seen, result = first_evaluation(engine, params, content, [style])
    first_px = schedule(size, steps)[0][0]
    assert seen["scale"] == first_px and (first_px < size) == (steps == 8)
    styler = engine.instant_styler()
    stage = fit_size(*fit_size(*content.size, size), first_px)  # the engine sizes a stage from the output's size
    expected = tensor_to_pil(styler.stylise_tensor(pil_to_tensor(content, stage),
                                                   [styler.upload_stats(style, first_px)], [1.0]))
    assert seen["image"].size == expected.size == stage
    assert psnr(seen["image"], expected) >= 50  # the same image (8-bit rounding aside)
    # ... and not the photo: the content term starts above 0 and the style term below the photo's 1
    assert seen["losses"]["content"] > 0.05 and seen["losses"]["style"] < 0.9
    photo_first, _ = first_evaluation(engine, params.model_copy(update={"init": "content"}), content, [style])
    assert photo_first["losses"]["content"] == 0 and photo_first["losses"]["style"] == pytest.approx(1, abs=1e-3)
    assert result.size == fit_size(*content.size, size)


def test_a_blend_starts_from_the_blended_instant_result(engine):
    content, styles = image("coffee"), [image("udnie"), image("the_scream")]
    params = StyleParams(size=64, steps=1, seed=0, init="instant", style_weights=[3, 1])
    seen, result = first_evaluation(engine, params, content, styles)
    styler = engine.instant_styler()
    stats = [styler.upload_stats(s, 64) for s in styles]
    assert psnr(seen["image"], styler.stylise(content, stats, [0.75, 0.25], 64)) >= 50
    assert psnr(seen["image"], styler.stylise(content, stats[:1], [1.0], 64)) < 45  # not the first painting alone
    assert psnr(result, seen["image"]) >= 50  # one evaluation: the job returns its start


def test_preserve_color_applies_to_the_result_as_for_any_init(engine):
    content, style = image("chelsea"), image("the_scream")
    params = StyleParams(size=64, steps=1, seed=0, init="instant", preserve_color=True)
    seen, result = first_evaluation(engine, params, content, [style])
    from app.style.engine import preserve_colors
    expected = tensor_to_pil(preserve_colors(pil_to_tensor(seen["image"]), pil_to_tensor(content, result.size)))
    assert psnr(result, expected) >= 45


def test_without_a_decoder_the_engine_says_so(tmp_path):
    (tmp_path / VGG.name).symlink_to(VGG.resolve())  # a VGG with no manifest beside it
    bare = StyleEngine(tmp_path / VGG.name, "cpu")
    with pytest.raises(InstantInitUnavailable, match="init=instant needs the style decoder.*training.decoder"):
        bare.run(image("chelsea"), [image("udnie")], StyleParams(size=64, steps=1, init="instant"))
    bare.run(image("chelsea"), [image("udnie")], StyleParams(size=64, steps=1))  # the other inits still run


# --------------------------------------------------------------------------------------------- API

def photo_bytes(name: str) -> bytes:
    return next(iter(sorted(STYLE_DIR.glob(f"{name}.*")))).read_bytes()


@pytest.fixture(scope="module")
def client(tiny_weights_dir, tmp_path_factory):
    # the models are the tiny ones; VGG and the decoder are the committed ones (found beside STYLE_VGG_WEIGHTS)
    settings = make_settings(tiny_weights_dir, tmp_path_factory.mktemp("init-instant-data"), job_workers=1,
                             style_vgg_weights=VGG)
    with TestClient(create_app(settings)) as test_client:
        wait_until_ready(test_client)
        yield test_client


def wait_done(client, job_id):
    import time

    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        job = client.get(f"/v1/style/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not done: {client.get(f'/v1/style/jobs/{job_id}').json()}")


def test_options_list_instant(client):
    body = client.get("/v1/style/options").json()
    assert "instant" in body["limits"]["init"]["choices"]
    assert set(body["limits"]["init"]["choices"]) == {"content", "noise", "instant"}
    assert body["defaults"]["init"] == StyleParams.model_fields["init"].default
    assert "instant" in body["descriptions"]["init"]


def test_a_job_with_init_instant_runs_end_to_end(client):
    form = {"size": "64", "style_preset": "udnie"}
    files = [("content", ("chelsea.png", photo_bytes("chelsea"), "image/png"))]
    response = client.post("/v1/style/jobs", files=files, data={**form, "steps": "1", "init": "instant"})
    assert response.status_code == 202, response.text
    assert response.json()["params"]["init"] == "instant"
    job = wait_done(client, response.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["losses"]["content"] > 0.05 and job["losses"]["style"] < 0.9  # not the photo's 0 and 1
    result = Image.open(io.BytesIO(client.get(f"/v1/style/jobs/{job['id']}/result").content)).convert("RGB")
    # one evaluation: the job's result is its start, the instant stylisation of the same inputs (what POST
    # /v1/style/instant answers for this form)
    styler = InstantStyler.load([WEIGHTS], [VGG], "cpu")
    chelsea = Image.open(io.BytesIO(photo_bytes("chelsea"))).convert("RGB")
    instant_image = styler.stylise(chelsea, [styler.preset_stats("udnie", 64)], [1.0], 64)
    assert result.size == instant_image.size
    assert psnr(result, instant_image) >= 35  # a styler of its own: bfloat16 in another memory layout
    photo = Image.open(io.BytesIO(photo_bytes("chelsea"))).convert("RGB").resize(result.size, Image.LANCZOS)
    assert psnr(result, photo) < psnr(result, instant_image) - 10

    longer = client.post("/v1/style/jobs", files=files, data={**form, "steps": "6", "init": "instant"})
    assert longer.status_code == 202, longer.text
    done = wait_done(client, longer.json()["id"])
    assert done["status"] == "succeeded" and done["progress"]["step"] == 6, done


def test_init_instant_without_a_decoder_is_422(tiny_weights_dir, tmp_path):
    vgg = tmp_path / "vgg" / VGG.name
    vgg.parent.mkdir()
    vgg.symlink_to(VGG.resolve())  # no manifest beside it, and the tiny weights dir lists no decoder
    settings = make_settings(tiny_weights_dir, tmp_path / "data", job_workers=0, style_vgg_weights=vgg)
    with TestClient(create_app(settings)) as other:
        wait_until_ready(other)
        files = [("content", ("chelsea.png", photo_bytes("chelsea"), "image/png"))]
        response = other.post("/v1/style/jobs", files=files,
                              data={"size": "64", "steps": "1", "style_preset": "udnie", "init": "instant"})
        assert response.status_code == 422, response.text
        detail = json.dumps(response.json())
        assert "init" in detail and "style decoder" in detail and "training.decoder" in detail
        ok = other.post("/v1/style/jobs", files=files, data={"size": "64", "steps": "1", "style_preset": "udnie",
                                                             "init": "content"})
        assert ok.status_code == 202, ok.text
