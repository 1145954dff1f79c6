"""The style-transfer engine (app/style/engine.py), the VGG features (models/vgg.py) and the presets table.

Uses the real partial VGG-19 weights (weights/vgg19_features_0-16.pth) on tiny 64 px images and few steps.
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from hypothesis import given, settings, strategies as st
from pydantic import ValidationError

from models.checkpoints import sha256_of
from app.style.engine import ProgressInfo, StyleCancelled, StyleDiverged, StyleEngine, pil_to_tensor, rgb_to_ycbcr
from app.style.losses import gram
from app.style.options import StyleInputError, StyleParams, schedule
from app.style.presets import PRESETS, list_presets, preset_path
from models.vgg import (CAFFE_MEAN_BGR, LAYER_INDEX, VGG19Features, caffe_deprocess, caffe_preprocess)

ROOT = Path(__file__).resolve().parents[1]
VGG_FILE = ROOT / "weights" / "vgg19_features_0-16.pth"


@pytest.fixture(scope="module")
def engine():
    torch.manual_seed(0)
    return StyleEngine(VGG_FILE, "cpu")


def _image(w: int, h: int, seed: int) -> Image.Image:
    """A smooth colourful picture with some edges (deterministic)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([np.sin(6 * xx + rng.uniform(0, 3)), np.cos(5 * yy + rng.uniform(0, 3)),
                     np.sin(4 * (xx + yy) + rng.uniform(0, 3))], axis=-1) * 0.4 + 0.5
    base[h // 4: h // 2, w // 4: w // 2] = rng.uniform(0, 1, 3)
    base += rng.normal(0, 0.05, base.shape)
    return Image.fromarray((base.clip(0, 1) * 255).astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def content():
    return _image(80, 64, seed=1)


@pytest.fixture(scope="module")
def style():
    return _image(64, 64, seed=2)


# --------------------------------------------------------------------------------------------- VGG and maths

def test_caffe_preprocess_convention():
    rgb = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1)  # R=255, G=127.5, B=0
    x = caffe_preprocess(rgb).flatten().tolist()
    assert x == pytest.approx([0 - 103.939, 127.5 - 116.779, 255 - 123.68], abs=1e-4)  # B, G, R order
    img = torch.rand(2, 3, 5, 7)
    assert torch.allclose(caffe_deprocess(caffe_preprocess(img)), img, atol=1e-5)
    assert CAFFE_MEAN_BGR == (103.939, 116.779, 123.68)


def test_layer_names_follow_torchvision_indices():
    assert LAYER_INDEX["conv1_1"] == 0 and LAYER_INDEX["relu1_1"] == 1 and LAYER_INDEX["conv2_2"] == 7
    assert LAYER_INDEX["conv3_4"] == 16 and LAYER_INDEX["conv4_2"] == 21 and LAYER_INDEX["conv5_4"] == 34


def test_partial_vgg_loads_strictly_and_conv1_1_is_stable(engine):
    vgg = VGG19Features.from_file(VGG_FILE)
    assert not vgg.is_full and len(vgg) == 18 and vgg.layer_names[-1] == "relu3_4"
    sd = torch.load(VGG_FILE, weights_only=True)
    assert sorted({int(k.split(".")[0]) for k in sd}) == [0, 2, 5, 7, 10, 12, 14, 16]
    broken = dict(sd)
    del broken["16.bias"]
    with pytest.raises(RuntimeError):
        VGG19Features.from_state_dict(broken)
    # conv1_1 on a constant Caffe input: interior pixels = sum of the kernel * value + bias (a hand computation)
    x = torch.full((1, 3, 8, 8), 10.0)
    out = vgg.extract(x, ["conv1_1"])["conv1_1"]
    assert out.shape == (1, 64, 8, 8)
    expected = sd["0.weight"].sum(dim=(1, 2, 3)) * 10.0 + sd["0.bias"]
    assert torch.allclose(out[0, :, 4, 4], expected, atol=1e-3)
    # channel order matters: the same photo in BGR and RGB order gives different features
    photo = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    bgr = vgg.extract(caffe_preprocess(photo), ["relu1_1"])["relu1_1"]
    rgb = vgg.extract(caffe_preprocess(photo).flip(1), ["relu1_1"])["relu1_1"]
    assert (bgr - rgb).abs().mean() > 0.05 * bgr.abs().mean()


def test_extract_stops_at_the_deepest_needed_layer():
    vgg = VGG19Features.from_file(VGG_FILE)
    calls = []
    for i, module in enumerate(vgg):
        module.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
    vgg.extract(torch.zeros(1, 3, 16, 16), ["relu1_2", "conv2_1"])
    assert max(calls) == LAYER_INDEX["conv2_1"]
    with pytest.raises(KeyError, match="not available"):
        vgg.extract(torch.zeros(1, 3, 16, 16), ["conv4_2"])


def test_full_vgg_state_dict_is_accepted(tmp_path):
    full = VGG19Features(last_conv=LAYER_INDEX["conv5_4"])
    sd = {f"features.{k}": v for k, v in full.state_dict().items()}
    sd["classifier.0.weight"] = torch.zeros(2, 2)  # a whole torchvision-layout VGG-19 file
    path = tmp_path / "vgg19_full.pth"
    torch.save(sd, path)
    engine = StyleEngine(path, "cpu")
    assert engine.full_vgg and engine.vgg.is_full
    assert engine.content_layers == ("conv4_2",) and "conv5_1" in engine.style_layers
    with pytest.raises(ValueError, match="full_vgg"):
        StyleEngine(VGG_FILE, "cpu", full_vgg=True)


def test_gram_matches_hand_computation_and_is_float32():
    f = torch.arange(2 * 3 * 4, dtype=torch.float64).reshape(1, 2, 3, 4) / 10
    g = gram(f)
    assert g.dtype == torch.float32 and g.shape == (1, 2, 2)
    flat = f.reshape(2, 12)
    expected = (flat @ flat.T) / (2 * 3 * 4)
    assert torch.allclose(g[0].double(), expected, atol=1e-5)
    assert gram(f.to(torch.bfloat16)).dtype == torch.float32


# --------------------------------------------------------------------------------------------- running

def test_losses_fall_and_progress_is_reported(engine, content, style):
    seen: list[ProgressInfo] = []
    previews = []

    def progress(info: ProgressInfo):
        seen.append(info)
        if info.step == 1:
            previews.append(info.preview())

    params = StyleParams(size=64, steps=12, style_weight=1e3, seed=0)
    engine.run(content, [style], params, on_progress=progress)
    assert [i.step for i in seen] == list(range(1, 13)) and all(i.total == 12 for i in seen)
    assert set(seen[0].losses) == {"content", "style", "tv", "total"}
    assert all(isinstance(v, float) for v in seen[0].losses.values())
    assert seen[-1].losses["total"] < 0.5 * seen[0].losses["total"]
    assert seen[-1].losses["style"] < seen[0].losses["style"]
    assert isinstance(previews[0], Image.Image) and previews[0].mode == "RGB"


@pytest.mark.parametrize(("w", "h", "size", "expected"), [(80, 64, 64, (64, 51)), (50, 100, 96, (48, 96)),
                                                          (300, 300, 64, (64, 64))])
def test_output_size_and_aspect(engine, style, w, h, size, expected):
    out = engine.run(_image(w, h, seed=3), [style], StyleParams(size=size, steps=2))
    assert out.size == expected and out.mode == "RGB"
    assert max(out.size) == size


def test_default_size_depends_on_device():
    assert StyleParams().output_size("cpu") == 256
    assert StyleParams().output_size("cuda") == 512
    assert StyleParams(size=300).output_size("cpu") == 300


def test_coarse_to_fine_schedule():
    stages = schedule(256, 250)
    assert stages[-1][0] == 256 and sum(n for _, n in stages) == 250 and stages[0][0] == 128
    assert schedule(64, 10) == [(64, 10)]  # too small for a coarse scale


def test_seed_reproducibility(engine, content, style):
    run = lambda seed: np.asarray(engine.run(content, [style], StyleParams(size=64, steps=4, init="noise",  # noqa: E731
                                                                           seed=seed)))
    a, b, c = run(7), run(7), run(8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_should_stop_cancels_within_one_step(engine, content, style):
    steps = []
    polls = {"n": 0}

    def stop():
        polls["n"] += 1
        return len(steps) >= 3

    with pytest.raises(StyleCancelled):
        engine.run(content, [style], StyleParams(size=64, steps=50), on_progress=lambda i: steps.append(i.step),
                   should_stop=stop)
    assert steps == [1, 2, 3]
    assert polls["n"] == 4  # polled before every evaluation


def test_preserve_color_keeps_the_content_chroma(engine, content, style):
    out = engine.run(content, [style], StyleParams(size=64, steps=6, style_weight=1e4, preserve_color=True))
    plain = engine.run(content, [style], StyleParams(size=64, steps=6, style_weight=1e4))
    ref = pil_to_tensor(content, out.size)
    chroma = lambda img: rgb_to_ycbcr(img)[:, 1:]  # noqa: E731
    kept = (chroma(pil_to_tensor(out)) - chroma(ref)).abs().mean().item()
    changed = (chroma(pil_to_tensor(plain)) - chroma(ref)).abs().mean().item()
    assert kept < 0.01
    assert changed > 2 * kept
    # the luminance is the stylised one, not the content's
    luma = lambda img: rgb_to_ycbcr(img)[:, :1]  # noqa: E731
    assert (luma(pil_to_tensor(out)) - luma(pil_to_tensor(plain))).abs().mean().item() < 0.02


def test_style_blend_weights(engine, content, style):
    other = _image(64, 48, seed=9)
    params = dict(size=64, steps=3, init="noise", seed=1)
    single = np.asarray(engine.run(content, [style], StyleParams(**params)))
    blended_off = np.asarray(engine.run(content, [style, other], StyleParams(**params, style_weights=[2.0, 0.0])))
    blended = np.asarray(engine.run(content, [style, other], StyleParams(**params, style_weights=[1.0, 1.0])))
    assert np.array_equal(single, blended_off)
    assert not np.array_equal(single, blended)
    assert StyleParams(style_weights=[1, 3]).blend(2) == [0.25, 0.75]
    with pytest.raises(ValueError, match="2 style image"):
        StyleParams(style_weights=[1.0]).blend(2)
    with pytest.raises(ValueError, match="style images are needed"):
        StyleParams().blend(0)


def test_a_loss_that_stops_being_finite_fails_the_run_naming_the_option(engine, content, style):
    # Past validation (model_construct), as a stored job from an older server could be: the engine's own guard.
    params = StyleParams.model_construct(**{**StyleParams(size=64, steps=3).model_dump(), "tv_weight": 1e39})
    with pytest.raises(StyleDiverged, match="lower tv_weight"):
        engine.run(content, [style], params)


@pytest.mark.parametrize("shape", [(10000, 10), (10, 10000), (5000, 1)])
def test_content_too_elongated_for_the_size_is_refused_with_the_limit(engine, style, shape):
    with pytest.raises(StyleInputError, match=r"at least 4 px \(at most about \d+:1"):
        engine.run(Image.new("RGB", shape, "white"), [style], StyleParams(size=256, steps=2))


def test_a_panorama_painting_still_works_at_a_small_style_scale(engine, content):
    panorama = Image.fromarray(np.random.default_rng(1).integers(0, 255, (60, 1600, 3), dtype=np.uint8))
    image = engine.run(content, [panorama], StyleParams(size=64, steps=2, style_scale=0.25))
    assert max(image.size) == 64


def test_layers_beyond_the_partial_weights_are_refused(engine, content, style):
    with pytest.raises(ValueError, match="full VGG-19"):
        engine.run(content, [style], StyleParams(size=64, steps=1, content_layers=["conv4_2"]))


# --------------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize(("field", "value", "needle"), [
    ("size", 32, "greater than or equal to 64"), ("size", 4096, "less than or equal to 1024"),
    ("steps", 0, "greater than or equal to 1"), ("steps", 5000, "less than or equal to 2000"),
    ("style_weight", -1, "greater than or equal to 0"), ("tv_weight", float("nan"), "finite"),
    ("init", "zeros", "'content', 'noise' or 'instant'"), ("style_scale", 10, "less than or equal to 4"),
    ("style_scale", 0.1, "greater than or equal to 0.25"), ("style_weights", [0, 0], "must not all be 0"),
    ("style_weights", [1, -1], "between 0 and 1e+06"), ("style_weights", [], "at least 1"),
    ("style_weights", [1e300, 1e300], "between 0 and 1e+06"), ("tv_weight", 1e39, "less than or equal to 10000"),
    ("style_weight", 1e39, "less than or equal to 10000"), ("content_weight", 1e308, "less than or equal to 10000"),
    ("content_layers", ["pool1"], "unknown VGG-19 layer"), ("style_layers", ["conv9_9"], "unknown VGG-19 layer"),
    ("seed", -1, "greater than or equal to 0"), ("colour", True, "Extra inputs are not permitted"),
])
def test_params_validation_messages(field, value, needle):
    with pytest.raises(ValidationError) as info:
        StyleParams(**{field: value})
    text = str(info.value)
    assert field in text and needle in text


FLOAT_OPTIONS = ("style_weight", "content_weight", "tv_weight", "style_scale")


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(FLOAT_OPTIONS), value=st.floats(allow_nan=True, allow_infinity=True))
def test_every_accepted_number_is_one_float32_computes(field, value):
    """Any float a client sends is refused (naming the field) or small enough that losses stay finite."""
    try:
        params = StyleParams(**{field: value})
    except ValidationError as exc:
        assert field in str(exc)
        return
    accepted = getattr(params, field)
    assert math.isfinite(accepted) and 0 <= accepted <= 1e4
    assert math.isfinite(float(np.float32(accepted)))


def test_params_all_zero_weights_refused():
    with pytest.raises(ValidationError, match="cannot all be 0"):
        StyleParams(style_weight=0, content_weight=0, tv_weight=0)


# --------------------------------------------------------------------------------------------- presets, manifest

def test_presets_table():
    names = [p["name"] for p in list_presets()]
    assert names == sorted(["starry_night", "the_scream", "shipwreck", "udnie"])
    for entry in list_presets():
        assert "file" not in entry and entry["licence"].startswith("public domain")
        assert preset_path(entry["name"]).is_file()
    assert {PRESETS[n]["year"] for n in PRESETS} == {1889, 1893, 1805, 1913}
    assert preset_path("udnie").parent == ROOT / "data" / "style"


@pytest.mark.parametrize("name", ["nope", "../x", "../../weights/manifest", "starry_night.jpg", "/etc/passwd",
                                  "starry_night/../udnie", "", "STARRY_NIGHT"])
def test_unknown_presets_raise_key_error(name):
    with pytest.raises(KeyError):
        preset_path(name)


def test_manifest_asset_checksum():
    manifest = json.loads((ROOT / "weights" / "manifest.json").read_text())
    asset = manifest["assets"]["vgg19-features"]
    assert asset["file"] == VGG_FILE.name
    assert asset["sha256"] == sha256_of(VGG_FILE)
    assert asset["license"] == "CC BY 4.0"
    assert "vgg19-features" not in manifest["models"]
