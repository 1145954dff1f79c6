"""The style engine's speed-ups (issue 13 item 5) change the arithmetic, not the objective: the one-matmul Gram-loss
backward equals autograd's, the bfloat16 evaluations follow the float32 gradient, and a job still makes exactly
`steps` evaluations with its progress counted as before. The speed itself is measured by
`python -m bench.style_yardstick` (docs/style.md), not asserted here."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from app.style.engine import StyleEngine, native_bf16, pil_to_tensor, resolve_precision
from app.style.losses import Objective, _GramMSE, gram, gram_mse
from app.style.options import StyleParams, schedule
from tests.test_style_engine import _image as smooth_picture

ROOT = Path(__file__).resolve().parents[1]
VGG_FILE = ROOT / "weights" / "vgg19_features_0-16.pth"
PHOTOS = ROOT / "data" / "style"


def test_gram_mse_backward_is_exact():
    f = torch.rand(2, 5, 7, dtype=torch.double, requires_grad=True)
    target = torch.rand(2, 5, 5, dtype=torch.double)  # not symmetric: the formula must not rely on it
    assert torch.autograd.gradcheck(_GramMSE.apply, (f, target))


def test_gram_mse_equals_the_tutorial_loss_in_float32():
    x = torch.rand(1, 16, 12, 10, requires_grad=True)
    target = gram(torch.rand(1, 16, 12, 10))
    reference = F.mse_loss(gram(x), target)
    (ref_grad,) = torch.autograd.grad(reference, x)
    fused = gram_mse(x, target)
    (grad,) = torch.autograd.grad(fused, x)
    assert float(fused.detach()) == pytest.approx(float(reference.detach()), rel=1e-5)
    assert torch.allclose(grad, ref_grad, rtol=1e-4, atol=1e-6 * float(ref_grad.abs().max()))


def test_precision_choice():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bfloat16" if native_bf16(cpu) else "float32")
    assert resolve_precision("float32", cpu) == "float32" and resolve_precision("bfloat16", cpu) == "bfloat16"
    assert not native_bf16(torch.device("cuda"))  # CUDA keeps float32 (and channels_last)
    with pytest.raises(ValueError):
        resolve_precision("fp8", cpu)


@pytest.fixture(scope="module")
def engines():
    return {p: StyleEngine(VGG_FILE, "cpu", precision=p) for p in ("float32", "bfloat16")}


def test_the_float32_vgg_stays_for_targets_and_yardsticks(engines):
    for precision, engine in engines.items():
        assert next(engine.vgg.parameters()).dtype == torch.float32
        assert next(engine.net.parameters()).dtype == getattr(torch, precision)
        assert engine.precision == precision


def test_bfloat16_gradient_follows_the_float32_one(engines):
    content = pil_to_tensor(Image.open(PHOTOS / "chelsea.png"), (96, 64))
    style = pil_to_tensor(Image.open(PHOTOS / "starry_night.jpg"), (80, 64))
    x = (0.7 * content + 0.3 * torch.rand(content.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    grads, values = {}, {}
    for precision, engine in engines.items():
        prep = engine._prepare
        objective = Objective(engine.net, prep(content), [prep(style)], [1.0], engine.content_layers,
                              engine.style_layers, 1.0, 3.0, 0.0)
        xi = x.clone().requires_grad_(True)
        loss, _ = objective(prep(xi))
        loss.backward()
        grads[precision], values[precision] = xi.grad.flatten(), float(loss)
        # the relative terms are exact at the photo in either precision (targets made the same way)
        with torch.no_grad():
            _, parts = objective(prep(content))
        assert float(parts["content"]) == pytest.approx(0.0, abs=1e-6)
        assert float(parts["style"]) == pytest.approx(1.0, rel=1e-3)
    assert values["bfloat16"] == pytest.approx(values["float32"], rel=5e-3)
    cosine = F.cosine_similarity(grads["bfloat16"], grads["float32"], dim=0)
    assert cosine > 0.995, float(cosine)


def test_a_job_still_makes_exactly_its_steps_at_every_scale(engines):
    content, style = Image.open(PHOTOS / "chelsea.png"), Image.open(PHOTOS / "starry_night.jpg")
    seen = []
    out = engines["bfloat16"].run(content, [style], StyleParams(size=128, steps=12, seed=0),
                                  on_progress=lambda info: seen.append((info.step, info.total, info.scale_px)))
    assert max(out.size) == 128
    assert [s for s, _, _ in seen] == list(range(1, 13)) and {t for _, t, _ in seen} == {12}
    stages = schedule(128, 12)
    assert [px for _, _, px in seen] == [px for px, n in stages for _ in range(n)]


def test_bfloat16_jobs_do_not_stall_on_a_flat_start(engines):
    """A bfloat16 objective alone stalled L-BFGS here at the first steps (style stuck at 0.996 for all 12
    evaluations: the line search compared losses closer than bfloat16's rounding); the float32 warm-up of each
    stage lets it go on in bfloat16 as float32 does."""
    # gentle colour waves and a flat block (test_style_engine's pictures): little texture, a flat start
    content, style = smooth_picture(80, 64, seed=1), smooth_picture(64, 64, seed=2)
    styles = {}
    for precision, engine in engines.items():
        seen = []
        engine.run(content, [style], StyleParams(size=64, steps=12, style_weight=1.5, seed=0),
                   on_progress=lambda info: seen.append(info.losses["style"]))
        styles[precision] = seen
    assert styles["float32"][-1] < 0.3
    assert styles["bfloat16"][-1] < 0.3, styles
