"""Startup: manifest, checksums, device and handler discovery refuse bad configurations clearly."""
import json
import shutil

import pytest
import torch
from fastapi.testclient import TestClient

from app.serving.loading import StartupError, read_manifest, resolve_device, verify_weights
from app.core.errors import ServiceUnavailable
from app.serving.registry import ModelRegistry, discover_handlers
from app.main import create_app
from tests.conftest import make_settings, wait_until_ready


@pytest.fixture
def weights_copy(tiny_weights_dir, tmp_path):
    return shutil.copytree(tiny_weights_dir, tmp_path / "weights")


def start(weights_dir, tmp_path, **overrides):
    """Run the app's lifespan to the point of serving, then stop."""
    with TestClient(create_app(make_settings(weights_dir, tmp_path / "data", **overrides))) as client:
        wait_until_ready(client)
        return client.get("/readyz").json()


def edit_manifest(weights_dir, edit):
    path = weights_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest["models"])
    path.write_text(json.dumps(manifest))


def test_tiny_weights_load(tiny_weights_dir, tmp_path):
    ready = start(tiny_weights_dir, tmp_path)
    assert ready["status"] == "ready"
    assert ready["models"] == ["digits-cnn", "digits-mlp", "objects-resnet", "sentiment-lstm"]


def test_every_architecture_has_a_handler():
    handlers = discover_handlers()
    assert set(handlers) >= {"DigitsMLP", "DigitsCNN", "ObjectsResNet", "SentimentLSTM"}
    assert handlers["DigitsCNN"].task == "digits" and handlers["SentimentLSTM"].input_kind == "text"


def test_corrupt_weights_refuse_to_start(weights_copy, tmp_path):
    path = weights_copy / "digits-cnn.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StartupError, match=r"digits-cnn\.pt: sha256 mismatch \(expected [0-9a-f]+\.\., got"):
        start(weights_copy, tmp_path)


def test_corrupt_asset_refuses_to_start(weights_copy, tmp_path):
    vgg = weights_copy / "vgg.pth"
    vgg.write_bytes(b"not the VGG weights")
    manifest_path = weights_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["assets"] = {"vgg19-features": {"file": "vgg.pth", "sha256": "0" * 64}}
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(StartupError, match=r"vgg\.pth: sha256 mismatch"):
        start(weights_copy, tmp_path)


def test_missing_weights_file_refuses_to_start(weights_copy, tmp_path):
    (weights_copy / "objects-resnet.pt").unlink()
    with pytest.raises(StartupError, match=r"objects-resnet\.pt: file listed in the manifest .* is missing"):
        start(weights_copy, tmp_path)


def test_missing_manifest_refuses_to_start(tmp_path):
    with pytest.raises(StartupError, match=r"manifest\.json: manifest not found"):
        start(tmp_path / "empty", tmp_path)


@pytest.mark.parametrize("content, problem", [
    ("{not json", "unreadable manifest"),
    ('{"models": {}}', "at least one model"),
    ('[1, 2]', "expected an object"),
])
def test_invalid_manifest_refuses_to_start(weights_copy, tmp_path, content, problem):
    (weights_copy / "manifest.json").write_text(content)
    with pytest.raises(StartupError, match=problem):
        start(weights_copy, tmp_path)


def test_entry_missing_fields_is_refused(weights_copy):
    edit_manifest(weights_copy, lambda models: models["digits-mlp"].pop("sha256"))
    with pytest.raises(StartupError, match=r"model 'digits-mlp': missing field\(s\) sha256"):
        read_manifest(weights_copy)


def test_unknown_architecture_refuses_to_start(weights_copy, tmp_path):
    edit_manifest(weights_copy, lambda models: models["digits-mlp"].update(architecture="DigitsTransformer"))
    with pytest.raises(StartupError, match=r"'digits-mlp' has architecture 'DigitsTransformer', which no handler"):
        start(weights_copy, tmp_path)


def test_task_that_contradicts_the_architecture_is_refused(weights_copy, tmp_path):
    edit_manifest(weights_copy, lambda models: models["digits-mlp"].update(task="objects"))
    with pytest.raises(StartupError, match=r"'digits-mlp' says task 'objects' but DigitsMLP serves task 'digits'"):
        start(weights_copy, tmp_path)


def test_two_defaults_for_one_task_are_refused(weights_copy, tmp_path):
    edit_manifest(weights_copy, lambda models: models["digits-mlp"].update(default=True))
    with pytest.raises(StartupError, match="task digits has more than one default model"):
        start(weights_copy, tmp_path)


def test_weights_that_do_not_fit_the_config_fail_readiness(weights_copy, tmp_path):
    edit_manifest(weights_copy, lambda models: models["digits-cnn"]["config"].update(width=16))
    with TestClient(create_app(make_settings(weights_copy, tmp_path / "data"))) as client:
        with pytest.raises(AssertionError, match="model loading failed"):
            wait_until_ready(client)
        body = client.get("/readyz").json()
        assert client.get("/readyz").status_code == 503
        assert body["status"] == "failed" and "digits-cnn.pt: does not fit DigitsCNN" in body["error"]
        response = client.post("/v1/sentiment/predict", json={"text": "good"})
        assert response.status_code == 503 and "model loading failed" in response.json()["detail"]


def test_verify_weights_accepts_the_tiny_weights(tiny_weights_dir):
    verify_weights(tiny_weights_dir, read_manifest(tiny_weights_dir))


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu", ""])
def test_invalid_device_refuses_to_start(tiny_weights_dir, tmp_path, device):
    with pytest.raises(StartupError, match=r"DEVICE=.* is not valid; use auto, cpu, cuda or cuda:N"):
        start(tiny_weights_dir, tmp_path, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_unavailable_cuda_refuses_to_start(tiny_weights_dir, tmp_path, device):
    with pytest.raises(StartupError, match=f"DEVICE={device} but CUDA is not available"):
        start(tiny_weights_dir, tmp_path, device=device)


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_index_beyond_the_visible_devices_is_refused():
    with pytest.raises(StartupError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_predicting_before_the_models_are_loaded_is_503(tiny_weights_dir, tmp_path):
    registry = ModelRegistry.from_settings(make_settings(tiny_weights_dir, tmp_path), torch.device("cpu"))
    assert registry.status == "loading" and registry.loaded == []
    with pytest.raises(ServiceUnavailable, match="models are still loading") as raised:
        registry.for_task("digits")
    assert raised.value.status_code == 503 and raised.value.headers == {"Retry-After": "2"}
    assert registry.describe("digits-cnn")["loaded"] is False


def test_model_batching_is_set_per_model(tiny_weights_dir, tmp_path):
    """MODEL_BATCHING overrides BATCH_MAX_SIZE / BATCH_MAX_WAIT_MS for the models it names, and only for them;
    GET /v1/models shows each model's batching."""
    settings = make_settings(tiny_weights_dir, tmp_path / "data", model_batching="digits-mlp=1, objects-resnet=8/5",
                             batch_max_size=16, batch_max_wait_ms=3)
    with TestClient(create_app(settings, wait_until_ready=True)) as client:
        batchers = {name: (s.batcher.max_size, s.batcher.max_wait * 1000)
                    for name, s in client.app.state.services.registry._served.items()}
        shown = {m["name"]: m["batching"] for m in client.get("/v1/models").json()["models"]}
    assert batchers == {"digits-mlp": (1, 3.0), "objects-resnet": (8, 5.0), "digits-cnn": (16, 3.0),
                        "sentiment-lstm": (16, 3.0)}
    assert shown["objects-resnet"] == {"max_size": 8, "max_wait_ms": 5.0}
    assert shown["digits-cnn"] == {"max_size": 16, "max_wait_ms": 3.0}


def test_model_batching_naming_an_unknown_model_refuses_to_start(tiny_weights_dir, tmp_path):
    with pytest.raises(StartupError, match=r"MODEL_BATCHING names digits-xl, not in the manifest \(models: "):
        start(tiny_weights_dir, tmp_path, model_batching="digits-xl=4")


@pytest.mark.parametrize("value", ["digits-mlp", "digits-mlp=", "digits-mlp=0", "=4", "digits-mlp=4/x",
                                   "digits-mlp=4/-1", "digits-mlp=four", "digits-mlp=4/1e9"])
def test_malformed_model_batching_is_refused_with_the_entry(value, tmp_path):
    from pydantic import ValidationError

    from app.core.config import Settings

    with pytest.raises(ValidationError, match=r"MODEL_BATCHING entry .*write NAME=MAX_SIZE"):
        Settings(model_batching=value, data_dir=tmp_path)
