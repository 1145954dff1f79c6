"""The committed weights meet their targets on the held-out sets shipped in data/heldout/, on every inference
backend: PyTorch (the state_dicts) and ONNX Runtime (their committed ONNX exports)."""
import json

import pytest

from training.common import HELDOUT_DIR, WEIGHTS_DIR, sha256_of
from training.evaluate import BACKENDS, measure

TARGETS = {"digits-mlp": 0.975, "digits-cnn": 0.995, "objects-cnn": 0.80, "sentiment-lstm": 0.85}
FULL_SIZES = {"digits": 10_000, "objects": 1_017, "sentiment": 872}
MANIFEST = json.loads((WEIGHTS_DIR / "manifest.json").read_text())["models"]


def test_every_target_model_is_committed_with_a_matching_checksum():
    assert set(TARGETS) <= set(MANIFEST)
    for name, entry in MANIFEST.items():
        assert sha256_of(WEIGHTS_DIR / entry["file"]) == entry["sha256"], name


def test_every_target_model_has_a_verified_onnx_export():
    for name in TARGETS:
        onnx = MANIFEST[name]["onnx"]
        assert onnx["weights_sha256"] == MANIFEST[name]["sha256"], f"{name}: export of other weights"
        assert sha256_of(WEIGHTS_DIR / onnx["file"]) == onnx["sha256"], name
        assert sha256_of(WEIGHTS_DIR / onnx["check_file"]) == onnx["check_sha256"], name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_committed_weights_meet_their_target(name, backend):
    entry = MANIFEST[name]
    metrics = measure(entry, WEIGHTS_DIR, HELDOUT_DIR, backend=backend)
    assert metrics["size"] == FULL_SIZES[entry["task"]]
    assert metrics["accuracy"] >= TARGETS[name], f"{name}: {metrics['accuracy']:.4f} < {TARGETS[name]}"
    # The manifest's claim is what the weights really do (bf16 on GPU vs float32 here differ a little).
    assert metrics["accuracy"] == pytest.approx(entry["metrics"]["accuracy"], abs=0.005)
