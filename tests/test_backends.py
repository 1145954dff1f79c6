"""Inference backends (INFERENCE_BACKEND=auto|torch|onnxruntime): the ONNX exports equal PyTorch, a bad export stops
startup naming the model, onnxruntime serves what torch serves, auto picks one and says which."""
import base64
import io
import json
import shutil
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.serving import backends
from app.serving.backends import MAX_ABS_DIFF, OnnxRunner, TorchRunner, choose_runner, verify_backend
from app.core.config import PROJECT_ROOT, Settings
from app.serving.loading import StartupError, read_manifest
from app.serving.registry import discover_handlers
from app.main import create_app
from tests.conftest import make_settings, wait_until_ready, write_tiny_weights
from training import digits, objects
from training.common import HELDOUT_DIR, sha256_of
from training.data import load_heldout

REAL_WEIGHTS = PROJECT_ROOT / "weights"


def handler_of(weights_dir, name, backend="torch"):
    entry = read_manifest(weights_dir)[name]
    handler = discover_handlers()[entry["architecture"]](entry, weights_dir,
                                                        Settings(weights_dir=weights_dir, inference_backend=backend))
    handler.setup(torch.device("cpu"))
    return handler


def heldout_batches(handler, n: int, batch_size: int):
    """Real held-out inputs for the handler's task, as decoded items, in batches."""
    if handler.task == "sentiment":
        texts = [str(t) for t in load_heldout(HELDOUT_DIR, "sst2-dev")["texts"][:n]]
        items = [handler.decode_request(t) for t in texts]
    else:
        name, to_tensor = ("mnist-test", digits.to_tensor) if handler.task == "digits" else \
            ("cifar-test", objects.to_tensor)
        items = list(to_tensor(load_heldout(HELDOUT_DIR, name)["x"][:n], "cpu"))
    return [items[i:i + batch_size] for i in range(0, len(items), batch_size)]


def export_differences(weights_dir, name, n=96) -> float:
    """Largest logit difference over n held-out inputs in batches of 7 and 32, and 4 of them alone."""
    handler = handler_of(weights_dir, name)
    torch_runner = TorchRunner(handler.model, handler.device, handler.cpu_inputs)
    onnx_runner = OnnxRunner(weights_dir / handler.entry["onnx"]["file"], threads=2)
    worst = 0.0
    batches = heldout_batches(handler, 4, 1) + heldout_batches(handler, n, 7) + heldout_batches(handler, n, 32)
    for batch in batches:
        inputs = handler.collate(batch)
        worst = max(worst, float((torch_runner(inputs) - onnx_runner(inputs)).abs().max()))
    return worst


# --- the export -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["digits-cnn", "digits-mlp", "objects-resnet", "sentiment-lstm"])
def test_tiny_exports_equal_pytorch_on_heldout_inputs(tiny_weights_dir, name):
    assert export_differences(tiny_weights_dir, name) <= MAX_ABS_DIFF


@pytest.mark.real_weights
@pytest.mark.parametrize("name", ["digits-cnn", "digits-mlp", "objects-cnn", "sentiment-lstm"])
def test_committed_exports_equal_pytorch_on_heldout_inputs(name):
    assert export_differences(REAL_WEIGHTS, name, n=64 if name == "objects-cnn" else 256) <= MAX_ABS_DIFF


def test_sentiment_export_takes_any_length_and_ignores_padding(tiny_weights_dir):
    """Padded ids + lengths: a sentence's logits do not depend on the longer sentences it is batched with."""
    handler = handler_of(tiny_weights_dir, "sentiment-lstm")
    runner = OnnxRunner(tiny_weights_dir / handler.entry["onnx"]["file"], threads=1)
    sentences = [[2 + (i * 7 + j) % 20 for j in range(length)] for i, length in enumerate((1, 3, 17, 60, 2, 130))]
    together = runner(handler.collate(sentences))
    for i, sentence in enumerate(sentences):
        alone = runner(handler.collate([sentence]))
        assert torch.allclose(alone[0], together[i], atol=1e-5), i
    torch_runner = TorchRunner(handler.model, handler.device, handler.cpu_inputs)
    assert float((torch_runner(handler.collate(sentences)) - together).abs().max()) <= MAX_ABS_DIFF


def test_the_export_command_writes_verified_files(tiny_weights_dir):
    manifest = json.loads((tiny_weights_dir / "manifest.json").read_text())["models"]
    for name, entry in manifest.items():
        onnx = entry["onnx"]
        assert onnx["weights_sha256"] == entry["sha256"]
        assert sha256_of(tiny_weights_dir / onnx["file"]) == onnx["sha256"]
        assert sha256_of(tiny_weights_dir / onnx["check_file"]) == onnx["check_sha256"]
        assert onnx["max_abs_diff"] <= MAX_ABS_DIFF
        with np.load(tiny_weights_dir / onnx["check_file"]) as check:
            assert set(check.files) == set(onnx["inputs"]) and len(check[check.files[0]]) == 8


# --- startup refuses a bad export -----------------------------------------------------------------------------------

@pytest.fixture
def weights_copy(tiny_weights_dir, tmp_path):
    return shutil.copytree(tiny_weights_dir, tmp_path / "weights")


def edit_entry(weights_dir, name, edit):
    path = weights_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest["models"][name])
    path.write_text(json.dumps(manifest))


def readiness(weights_dir, tmp_path, **overrides):
    settings = make_settings(weights_dir, tmp_path / "data", style_jobs_enabled=False, **overrides)
    with TestClient(create_app(settings)) as client:
        for _ in range(1500):
            body = client.get("/readyz").json()
            if body["status"] != "loading":
                return body, client.get("/v1/models").json()["models"]
            time.sleep(0.02)
    raise AssertionError("still loading after 30 s")


@pytest.mark.parametrize("backend", ["auto", "onnxruntime", "torch"])
def test_a_corrupted_onnx_file_stops_startup_naming_the_model(weights_copy, tmp_path, backend):
    path = weights_copy / "digits-mlp.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StartupError, match=r"digits-mlp\.onnx: sha256 mismatch .* for 'digits-mlp'; re-export"):
        readiness(weights_copy, tmp_path, inference_backend=backend)


@pytest.mark.parametrize("backend", ["auto", "onnxruntime"])
def test_an_export_of_other_weights_stops_startup_naming_the_model(weights_copy, tmp_path, backend):
    """An export whose checksum is right but whose numbers are not (another network's weights): the startup check
    against PyTorch on the fixed inputs refuses it."""
    other = write_tiny_weights(tmp_path / "other", seed=1)
    shutil.copy(other / "objects-resnet.onnx", weights_copy / "objects-resnet.onnx")
    edit_entry(weights_copy, "objects-resnet",
               lambda e: e["onnx"].update(sha256=sha256_of(weights_copy / "objects-resnet.onnx")))
    ready, _ = readiness(weights_copy, tmp_path, inference_backend=backend)
    assert ready["status"] == "failed"
    assert "model 'objects-resnet': ONNX Runtime and PyTorch disagree" in ready["error"]
    assert "python -m app.serving.onnx_export --models objects-resnet" in ready["error"]


def test_a_torch_backend_never_opens_the_exports(weights_copy, tmp_path):
    other = write_tiny_weights(tmp_path / "other", seed=1)
    shutil.copy(other / "objects-resnet.onnx", weights_copy / "objects-resnet.onnx")
    edit_entry(weights_copy, "objects-resnet",
               lambda e: e["onnx"].update(sha256=sha256_of(weights_copy / "objects-resnet.onnx")))
    ready, models = readiness(weights_copy, tmp_path, inference_backend="torch")
    assert ready["status"] == "ready" and set(ready["backends"].values()) == {"torch"}
    assert all(m["inference"]["reason"] == "INFERENCE_BACKEND=torch" for m in models)


def test_a_stale_export_stops_startup(weights_copy, tmp_path):
    edit_entry(weights_copy, "sentiment-lstm", lambda e: e["onnx"].update(weights_sha256="0" * 64))
    with pytest.raises(StartupError, match=r"model 'sentiment-lstm': sentiment-lstm\.onnx was exported from other "
                                           r"weights .* python -m app\.serving\.onnx_export --models sentiment-lstm"):
        readiness(weights_copy, tmp_path, inference_backend="auto")


def test_a_model_without_an_export(weights_copy, tmp_path):
    edit_entry(weights_copy, "digits-cnn", lambda e: e.pop("onnx"))
    with pytest.raises(StartupError, match=r"INFERENCE_BACKEND=onnxruntime but model 'digits-cnn' has no ONNX "
                                           r"export"):
        readiness(weights_copy, tmp_path, inference_backend="onnxruntime")
    ready, models = readiness(weights_copy, tmp_path, inference_backend="auto")
    assert ready["status"] == "ready" and ready["backends"]["digits-cnn"] == "torch"
    assert {m["name"]: m for m in models}["digits-cnn"]["inference"]["reason"] == "no ONNX export in the manifest"


def test_onnxruntime_is_refused_on_cuda_and_auto_keeps_torch_there(tiny_weights_dir):
    entries = read_manifest(tiny_weights_dir)
    cuda = torch.device("cuda")  # only its type is looked at: no GPU needed
    with pytest.raises(StartupError, match="INFERENCE_BACKEND=onnxruntime runs on the CPU only"):
        verify_backend(entries, Settings(inference_backend="onnxruntime"), cuda)
    verify_backend(entries, Settings(inference_backend="auto"), cuda)
    handler = handler_of(tiny_weights_dir, "digits-cnn", backend="auto")
    runner, info = choose_runner(handler, cuda)  # builds a runner only; nothing runs on the device
    assert isinstance(runner, TorchRunner) and info["reason"] == "cuda stays on PyTorch"


def test_a_nan_or_a_wrong_shape_is_the_largest_difference():
    inputs = {"x": torch.zeros(3, 2)}
    ones = lambda batch: torch.ones(len(batch["x"]), 2)  # noqa: E731
    assert backends.max_abs_diff(ones, ones, inputs) == 0.0
    assert backends.max_abs_diff(ones, lambda batch: torch.full((len(batch["x"]), 2), float("nan")), inputs) == \
        float("inf")
    assert backends.max_abs_diff(ones, lambda batch: torch.ones(len(batch["x"]), 3), inputs) == float("inf")


def test_the_setting_is_validated():
    with pytest.raises(ValueError):
        Settings(inference_backend="tensorrt")
    assert Settings(inference_backend="ONNXRuntime").inference_backend == "ONNXRuntime"


# --- auto ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("onnx_ms, expected", [(0.5, "onnxruntime"), (2.0, "torch")])
def test_auto_takes_the_faster_backend(tiny_weights_dir, monkeypatch, onnx_ms, expected):
    monkeypatch.setattr(backends, "time_backends", lambda runners, inputs, sizes: {
        "torch": {str(n): 1.0 for n in sizes}, "onnxruntime": {str(n): onnx_ms for n in sizes}})
    handler = handler_of(tiny_weights_dir, "digits-cnn", backend="auto")
    assert handler.runner.backend == expected == handler.inference["backend"]
    assert handler.inference["onnxruntime_time_ratio"] == onnx_ms


def test_auto_measures_picks_and_reports(tiny_weights_dir, tmp_path):
    ready, models = readiness(tiny_weights_dir, tmp_path, inference_backend="auto", batch_max_size=16)
    assert ready["status"] == "ready"
    for model in models:
        info = model["inference"]
        assert model["backend"] == info["backend"] == ready["backends"][model["name"]]
        assert info["requested"] == "auto" and info["max_abs_diff"] <= MAX_ABS_DIFF
        assert set(info["ms_per_batch"]) == {"torch", "onnxruntime"}
        assert all(set(ms) == {"1", "16"} and min(ms.values()) > 0 for ms in info["ms_per_batch"].values())
        assert (info["onnxruntime_time_ratio"] < 1) == (info["backend"] == "onnxruntime"), info


# --- the API on the committed weights: onnxruntime answers what torch answers ---------------------------------------

def png_b64(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def answers(client, task: str, field: str, inputs: list, model: str) -> list[dict]:
    results = []
    for start in range(0, len(inputs), 32):
        response = client.post(f"/v1/{task}/predict?model={model}&top_k=1", json={field: inputs[start:start + 32]})
        assert response.status_code == 200, response.text
        results += response.json()["results"]
    return results


@pytest.mark.real_weights
def test_onnxruntime_serves_the_same_answers_as_torch(tmp_path):
    requests = [("digits", "images", [png_b64(x) for x in load_heldout(HELDOUT_DIR, "mnist-test")["x"][:96]],
                 ["digits-cnn", "digits-mlp"]),
                ("objects", "images", [png_b64(x) for x in load_heldout(HELDOUT_DIR, "cifar-test")["x"][:64]],
                 ["objects-cnn"]),
                ("sentiment", "texts", [str(t) for t in load_heldout(HELDOUT_DIR, "sst2-dev")["texts"][:96]],
                 ["sentiment-lstm"])]
    served = {}
    for backend in ("torch", "onnxruntime"):
        settings = make_settings(REAL_WEIGHTS, tmp_path / backend, style_jobs_enabled=False,
                                 inference_backend=backend)
        with TestClient(create_app(settings)) as client:
            wait_until_ready(client, timeout_s=120)
            assert set(client.get("/readyz").json()["backends"].values()) == {backend}
            served[backend] = {model: answers(client, task, field, inputs, model)
                               for task, field, inputs, models in requests for model in models}
    for model, torch_answers in served["torch"].items():
        ort_answers = served["onnxruntime"][model]
        assert [a["label"] for a in ort_answers] == [a["label"] for a in torch_answers], model
        assert max(abs(a["score"] - b["score"]) for a, b in zip(ort_answers, torch_answers)) <= 1e-4, model
