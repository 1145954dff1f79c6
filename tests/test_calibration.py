"""Honest scores: the served probabilities are temperature-scaled as the manifest says, and calibrated on the test sets.

The ECE is recomputed here from the served model (the handler's predict, what the batcher calls), not read back from
the manifest; `python -m training.calibrate` writes the manifest figures (docs/calibration.md).
"""
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.serving.loading import StartupError
from app.serving.registry import ModelRegistry
from app.main import create_app
from tests.conftest import make_settings, wait_until_ready, write_tiny_weights
from training import calibrate, digits, objects
from training.common import HELDOUT_DIR, REPO_ROOT, WEIGHTS_DIR, default_data_dir
from training.data import load_heldout

ECE_TARGET = 0.03
CLASSIFIERS = ["digits-cnn", "digits-mlp", "objects-cnn", "sentiment-lstm"]
MANIFEST = json.loads((WEIGHTS_DIR / "manifest.json").read_text())["models"]
CALIBRATION_KEYS = {"method", "temperature", "split", "ece_before", "ece_after", "bins", "low_confidence_below"}
# Targets not met yet: name -> why (a strict xfail, so the test fails once the target is met). Empty: all met.
TARGET_NOT_MET: dict[str, str] = {}


@pytest.fixture(scope="module")
def real_client(tmp_path_factory):
    settings = make_settings(WEIGHTS_DIR, tmp_path_factory.mktemp("data"), style_jobs_enabled=False)
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client, timeout_s=120)
        yield client


def calibration(name: str) -> dict:
    block = MANIFEST[name].get("calibration")
    assert block is not None, f"{name} has no calibration: run python -m training.calibrate --models {name}"
    assert block["weights_sha256"] == MANIFEST[name]["sha256"], (
        f"{name}: calibrated for other weights; run python -m training.calibrate --models {name}")
    return block


def ece_split(name: str) -> tuple[list, np.ndarray]:
    """The decoded inputs and labels the manifest's ECE was measured on (the test set; objects: all of it, cross-
    fitted, or its half B in a block written before cross-fitting)."""
    task = MANIFEST[name]["task"]
    if task == "digits":
        data = load_heldout(HELDOUT_DIR, "mnist-test")
        return list(digits.to_tensor(data["x"], "cpu")), data["y"]
    if task == "objects":
        data = load_heldout(HELDOUT_DIR, "cifar-test")
        inputs, labels = list(objects.to_tensor(data["x"], "cpu")), data["y"]
        if "split_seed" in calibration(name) and "cross_fit" not in calibration(name):
            _, half_b = calibrate.stratified_halves(labels, calibration(name)["split_seed"])
            return [inputs[i] for i in half_b], labels[half_b]
        return inputs, labels
    data = load_heldout(HELDOUT_DIR, "sst2-dev")
    return [str(t) for t in data["texts"]], data["y"]


def served_probabilities(handler, inputs: list, batch_size: int = 500) -> np.ndarray:
    if handler.input_kind == "text":
        inputs = [handler.decode_request(text) for text in inputs]
    return torch.cat([handler.predict(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)]).numpy()


_measured: dict[str, float] = {}


def out_of_fold(probs: np.ndarray, labels: np.ndarray, block: dict) -> np.ndarray:
    """The served scores re-scored as the manifest's cross-fit did: fold i at fold_temperatures[i] (the served T
    recovered from the scores: T * log p is the logits up to a constant per input)."""
    cross_fit = block["cross_fit"]
    logits = block["temperature"] * np.log(np.clip(probs.astype(np.float64), 1e-300, None))
    scored = np.empty_like(logits)
    folds = calibrate.stratified_halves(labels, cross_fit["split_seed"])
    assert [len(f) for f in folds] == cross_fit["fold_sizes"]
    for fold, temperature in zip(folds, cross_fit["fold_temperatures"]):
        scored[fold] = calibrate.softmax(logits[fold], temperature)
    return scored


def served_ece(client, name: str) -> float:
    """ECE of the served scores on the manifest's ECE split, measured once per model; cross-fitted as the
    manifest's figure was when its temperature was fitted on the test set itself (objects-cnn)."""
    if name not in _measured:
        block = calibration(name)
        handler = client.app.state.services.registry.handler(name)
        assert handler.temperature == block["temperature"]
        inputs, labels = ece_split(name)
        assert len(labels) == block["ece_size"]
        probs = served_probabilities(handler, inputs)
        if "cross_fit" in block:
            in_sample = calibrate.expected_calibration_error(probs, labels, block["bins"])
            assert in_sample == pytest.approx(block["cross_fit"]["ece_served_in_sample"], abs=0.002)
            probs = out_of_fold(probs, labels, block)
        _measured[name] = calibrate.expected_calibration_error(probs, labels, block["bins"])
    return _measured[name]


@pytest.mark.real_weights
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_served_ece_is_the_manifest_figure(real_client, name):
    assert served_ece(real_client, name) == pytest.approx(calibration(name)["ece_after"], abs=0.002)
    # Fitted on data the model never saw, the temperature must help; a provisional fit (the weights trained on
    # the calibration images: digits until they are retrained) need not.
    block = calibration(name)
    assert served_ece(real_client, name) < block["ece_before"] or "PROVISIONAL" in block["split"]


@pytest.mark.real_weights
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(reason=TARGET_NOT_MET[n], strict=True))
                                  if n in TARGET_NOT_MET else n for n in CLASSIFIERS])
def test_served_scores_meet_the_ece_target(real_client, name):
    ece = served_ece(real_client, name)
    assert ece <= ECE_TARGET, f"{name}: ECE {ece:.4f} > {ECE_TARGET}"


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.real_weights
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_every_predict_route_serves_softmax_of_logits_over_temperature(real_client, name):
    handler = real_client.app.state.services.registry.handler(name)
    task, temperature = MANIFEST[name]["task"], calibration(name)["temperature"]
    assert temperature != 1.0
    if task == "sentiment":
        raw = ["ok", "!!!", "a gripping, beautifully acted film"]
        response = real_client.post(f"/v1/sentiment/predict?model={name}&top_k=2", json={"texts": raw})
    else:
        data = load_heldout(HELDOUT_DIR, "mnist-test" if task == "digits" else "cifar-test")
        raw = [png(data["x"][i]) for i in range(3)]
        response = real_client.post(f"/v1/{task}/predict?model={name}&top_k=2", files={"file": ("a.png", raw[0])})
        raw = raw[:1]
    assert response.status_code == 200, response.text
    body = response.json()
    answers = body.get("results", [body])
    with torch.inference_mode():
        logits = handler.forward([handler.decode_request(r) for r in raw]).float().numpy()
    expected, uncalibrated = calibrate.softmax(logits, temperature), calibrate.softmax(logits)
    for answer, p, p_raw in zip(answers, expected, uncalibrated, strict=True):
        assert answer["label"] == MANIFEST[name]["classes"][int(p.argmax())]
        assert answer["score"] == pytest.approx(p.max(), abs=2e-6)
        assert abs(answer["score"] - p_raw.max()) > 1e-4 or p_raw.max() > 0.9999  # the temperature did something


@pytest.mark.real_weights
def test_models_endpoint_shows_the_calibration(real_client):
    listed = {m["name"]: m for m in real_client.get("/v1/models").json()["models"]}
    for name in CLASSIFIERS:
        shown = listed[name]["calibration"]
        assert CALIBRATION_KEYS <= set(shown)
        block = calibration(name)
        for key in CALIBRATION_KEYS:
            assert shown[key] == block[key], (name, key)
        assert shown["method"] == "temperature" and shown["bins"] == 15
        assert 0 < shown["low_confidence_below"] < 1
        assert real_client.get(f"/v1/models/{name}").json()["calibration"] == shown


def test_uncalibrated_models_show_null_and_serve_the_plain_softmax(client):
    for model in client.get("/v1/models").json()["models"]:
        assert model["calibration"] is None
        assert client.app.state.services.registry.handler(model["name"]).temperature == 1.0


def _tiny_manifest(tmp_path):
    weights_dir = write_tiny_weights(tmp_path / "weights")
    return weights_dir, json.loads((weights_dir / "manifest.json").read_text())


def test_a_temperature_fitted_to_other_weights_is_not_applied(tmp_path):
    weights_dir, manifest = _tiny_manifest(tmp_path)
    entry = manifest["models"]["digits-mlp"]
    entry["calibration"] = {"method": "temperature", "temperature": 2.0, "weights_sha256": "0" * 64}
    manifest["models"]["sentiment-lstm"]["calibration"] = {
        "method": "temperature", "temperature": 2.0, "weights_sha256": manifest["models"]["sentiment-lstm"]["sha256"]}
    (weights_dir / "manifest.json").write_text(json.dumps(manifest))
    registry = ModelRegistry.from_settings(make_settings(weights_dir, tmp_path / "data"), torch.device("cpu"))
    assert registry.handler("digits-mlp").temperature == 1.0 and registry.handler("digits-mlp").calibration is None
    assert registry.handler("sentiment-lstm").temperature == 2.0


@pytest.mark.parametrize("temperature", [0, -1.5, "2", None, float("inf")])
def test_a_malformed_temperature_stops_the_server(tmp_path, temperature):
    weights_dir, manifest = _tiny_manifest(tmp_path)
    manifest["models"]["digits-mlp"]["calibration"] = {"method": "temperature", "temperature": temperature}
    (weights_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StartupError, match="temperature"):
        ModelRegistry.from_settings(make_settings(weights_dir, tmp_path / "data"), torch.device("cpu"))


def test_ece_by_hand():
    # Two bins used: 0.9 (3 of 4 right: |0.75 - 0.9| = 0.15) and 0.6 (both right: 0.4); weights 4/6 and 2/6.
    probs = np.array([[0.9, 0.1]] * 4 + [[0.4, 0.6]] * 2)
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert calibrate.expected_calibration_error(probs, labels, bins=15) == pytest.approx(4 / 6 * 0.15 + 2 / 6 * 0.4)
    assert calibrate.expected_calibration_error(np.array([[0.8, 0.2]] * 5), np.array([0, 0, 0, 0, 1])) == \
        pytest.approx(0.0)


def test_fit_temperature_recovers_the_temperature_labels_were_drawn_with():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, size=(20000, 10))
    p = calibrate.softmax(logits, 2.5)
    labels = np.array([rng.choice(10, p=row) for row in p])
    assert calibrate.fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.05)
    # and the scores it then gives are calibrated
    assert calibrate.expected_calibration_error(calibrate.softmax(logits, calibrate.fit_temperature(
        logits, labels)), labels) < 0.01


def test_low_confidence_threshold_is_where_accuracy_falls_under_the_level():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 50000)
    correct = rng.random(50000) < conf  # calibrated: right with probability = score
    probs = np.stack([conf, 1 - conf], 1)
    labels = np.where(correct, 0, 1)
    assert calibrate.low_confidence_threshold(probs, labels, 0.8) == pytest.approx(0.8, abs=0.02)
    # every answer right: nothing to measure, the calibrated score is taken at its word
    assert calibrate.low_confidence_threshold(probs, np.zeros(50000, dtype=int), 0.8) == 0.8


@pytest.mark.skipif(not (default_data_dir() / "MNIST").is_dir(), reason="needs ../shared/data")
def test_the_script_rewrites_only_the_calibration_of_the_named_models(tmp_path):
    weights_dir = write_tiny_weights(tmp_path / "weights")
    before = json.loads((weights_dir / "manifest.json").read_text())
    done = subprocess.run([sys.executable, "-m", "training.calibrate", "--models", "digits-mlp",
                           "--weights-dir", str(weights_dir)], capture_output=True, text=True, timeout=300,
                          cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    after = json.loads((weights_dir / "manifest.json").read_text())
    block = after["models"]["digits-mlp"].pop("calibration")
    assert after == before
    assert block["method"] == "temperature" and block["weights_sha256"] == before["models"]["digits-mlp"]["sha256"]
    assert "PROVISIONAL" in block["split"]  # the tiny weights do not say which images they left out
    assert "ECE(15 bins)" in done.stdout
    shutil.rmtree(weights_dir)
