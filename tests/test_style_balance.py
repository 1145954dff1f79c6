"""The adaptive style balance (issue 11 part 2): real jobs through the engine at the DEFAULT options, scored with
the tutorial yardstick (bench/style_yardstick.py) on the returned PNG. The full grid is bench/style_grid.py.

Uses the real partial VGG-19 weights, the shipped photos and presets, and the generated paintings of
bench/paintings.py; 64 px jobs and one 128 px job (a few seconds each on one CPU thread).
"""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.style.engine import StyleEngine, pil_to_tensor
from app.style.losses import Objective
from app.style.options import DEFAULT_STYLE_WEIGHT, StyleParams
from app.style.presets import preset_path
from bench.paintings import PAINTINGS, make_painting
from bench.style_yardstick import MAX_CONTENT_RATIO, MAX_STYLE_RATIO, Yardstick

ROOT = Path(__file__).resolve().parents[1]
VGG_FILE = ROOT / "weights" / "vgg19_features_0-16.pth"
PHOTOS = ROOT / "data" / "style"


@pytest.fixture(scope="module")
def engine():
    # One thread, as bench.style_grid runs its cells: the same arithmetic, so these jobs are cells of its grid.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield StyleEngine(VGG_FILE, "cpu")
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def yardstick(engine):
    return Yardstick(engine.vgg)


def _painting(name: str) -> Image.Image:
    return make_painting(name) if name in PAINTINGS else Image.open(preset_path(name))


def test_generated_paintings_are_deterministic_and_high_contrast():
    for name in PAINTINGS:
        a, b = np.asarray(make_painting(name)), np.asarray(make_painting(name))
        assert a.shape == (512, 512, 3) and np.array_equal(a, b)
        grey = a.mean(axis=-1)
        assert grey.std() > 60, name  # high contrast (a photo is about 40-60)
        assert (a.max(axis=-1) >= 200).mean() > 0.3, name  # bright: saturated or white over a third of it


@pytest.mark.parametrize(("photo", "painting", "size"), [
    ("rocket.jpg", "poster", 64),  # the dark photo with a hard-edged generated poster
    ("chelsea.png", "strokes", 64),  # random bright strokes on black
    ("rocket.jpg", "starry_night", 64),  # the report: barely a trace of the rocket
    ("rocket.jpg", "noise", 128),  # fine colour noise: its cost to the photo grows with the size
])
def test_default_options_keep_the_photo_and_carry_the_style(engine, yardstick, photo, painting, size):
    content, style = Image.open(PHOTOS / photo), _painting(painting)
    result = engine.run(content, [style], StyleParams(size=size, seed=0))
    score = yardstick.score(result, content, style, size=size)
    assert score.content_ratio <= MAX_CONTENT_RATIO, score.as_dict()
    assert score.style_ratio <= MAX_STYLE_RATIO, score.as_dict()


def test_larger_style_weight_means_more_style(engine, yardstick):
    content, style = Image.open(PHOTOS / "coffee.png"), _painting("noise")
    scores = [yardstick.score(engine.run(content, [style], StyleParams(size=64, steps=80, seed=0,
                                                                         style_weight=w)), content, style, 64)
              for w in (DEFAULT_STYLE_WEIGHT / 4, DEFAULT_STYLE_WEIGHT * 4)]
    low, high = scores
    assert high.style < low.style and high.content > low.content, (low.as_dict(), high.as_dict())


def test_objective_terms_are_relative(engine):
    """Both terms are dimensionless: the style term is 1 on the photo itself (its distance to the painting is the
    unit), the content term 0; neither changes when the painting is made darker or brighter overall."""
    content = pil_to_tensor(Image.open(PHOTOS / "chelsea.png"), (96, 64))
    style = pil_to_tensor(_painting("strokes"), (64, 64))
    prep = engine._prepare
    for painting in (style, style * 0.3, (style * 1.5).clamp(0, 1)):
        objective = Objective(engine.vgg, prep(content), [prep(painting)], [1.0], engine.content_layers,
                              engine.style_layers, 1.0, 1.0, 0.0)
        with torch.no_grad():
            _, parts = objective(prep(content))
        assert float(parts["content"]) == pytest.approx(0.0, abs=1e-6)
        assert float(parts["style"]) == pytest.approx(1.0, rel=1e-4)


def test_objective_is_the_tutorial_losses_made_relative(engine, yardstick):
    """The default objective is the tutorial's losses (the yardstick's: content conv2_2, style summed over conv1_1..
    conv3_1) with one normaliser per term: on any image, content = its content loss / the painting's own, style =
    its style loss / the photo's own. One normaliser per term keeps the tutorial's weighting of the layers."""
    photo = Image.open(PHOTOS / "rocket.jpg")
    painting = _painting("noise")
    size = (96, 64)
    photo01, painting01 = pil_to_tensor(photo, size), pil_to_tensor(painting, (64, 64))
    prep = engine._prepare
    objective = Objective(engine.vgg, prep(photo01), [prep(painting01)], [1.0], engine.content_layers,
                          engine.style_layers, 1.0, 1.0, 0.0, styles_framed=[prep(pil_to_tensor(painting, size))])
    generator = torch.Generator().manual_seed(0)
    for image in (torch.rand(photo01.shape, generator=generator), (photo01 * 0.7 + 0.3 * torch.rand(
            photo01.shape, generator=generator)).clamp(0, 1)):
        with torch.no_grad():
            _, parts = objective(prep(image))
        content = yardstick.content_loss(image, photo01) / yardstick.content_loss(pil_to_tensor(painting, size),
                                                                                  photo01)
        style = yardstick.style_loss(image, painting01) / yardstick.style_loss(photo01, painting01)
        assert float(parts["content"]) == pytest.approx(content, rel=1e-4)
        assert float(parts["style"]) == pytest.approx(style, rel=1e-4)
