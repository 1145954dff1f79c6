"""Shared fixtures: a weights dir of tiny randomly-initialised models, and a running app over it."""
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from models.digits import DIGIT_CLASSES
from models.objects import CIFAR10_CLASSES
from models.sentiment import PAD, SENTIMENT_CLASSES, UNK, SentimentLSTM
from training.common import save_model
from models import ARCHITECTURES
from app.serving.onnx_export import export_all

READY_TIMEOUT_S = 30
SENTIMENT_WORDS = [PAD, UNK, "good", "bad", "great", "awful", "movie", "film", "the", "a", "is", "was", "not",
                   "n't", "it", "'s", ".", ",", "!", "love", "hate", "boring", "fun"]
TINY_MODELS = {
    "digits-cnn": ("digits", "DigitsCNN", {"width": 8}, DIGIT_CLASSES, True),
    "digits-mlp": ("digits", "DigitsMLP", {"hidden": 16}, DIGIT_CLASSES, False),
    "objects-resnet": ("objects", "ObjectsResNet", {"width": 8, "blocks": 1}, CIFAR10_CLASSES, True),
    "sentiment-lstm": ("sentiment", "SentimentLSTM", {"vocab_size": 300, "embed_dim": 16, "hidden": 16},
                       SENTIMENT_CLASSES, True),
}


def build_tiny_model(architecture: str, config: dict) -> torch.nn.Module:
    model = ARCHITECTURES[architecture](**config)
    if isinstance(model, SentimentLSTM):
        fillers = [f"word{i}" for i in range(config["vocab_size"] - len(SENTIMENT_WORDS))]
        model.set_vocab(SENTIMENT_WORDS + fillers)
    return model


def write_tiny_weights(weights_dir: Path, seed: int = 0, onnx: bool = True) -> Path:
    """Seeded random instances of all four architectures, saved as the training scripts save theirs, and exported
    to ONNX by the same command as the committed weights (python -m app.serving.onnx_export)."""
    torch.manual_seed(seed)
    for name, (task, architecture, config, classes, default) in TINY_MODELS.items():
        save_model(build_tiny_model(architecture, config), weights_dir, name=name, task=task,
                   architecture=architecture, config=config, classes=classes, default=default,
                   metrics={"dataset": "none", "split": "test", "size": 0, "accuracy": 0.0},
                   hyperparameters={"epochs": 0, "seed": seed}, training_time_s=0.0, trained_on="tests")
    if onnx:
        export_all(weights_dir, quiet=True)
    return weights_dir


@pytest.fixture(scope="session")
def tiny_weights_dir(tmp_path_factory) -> Path:
    return write_tiny_weights(tmp_path_factory.mktemp("weights"))


def wait_until_ready(client: TestClient, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = client.get("/readyz")
        if response.status_code == 200:
            return
        if response.json().get("status") == "failed":
            raise AssertionError(f"model loading failed: {response.json()}")
        time.sleep(0.02)
    raise AssertionError(f"not ready after {timeout_s} s: {client.get('/readyz').json()}")


def make_settings(weights_dir: Path, data_dir: Path, **overrides) -> Settings:
    return Settings(weights_dir=weights_dir, data_dir=data_dir, **overrides)


@pytest.fixture(scope="module")
def client(tiny_weights_dir, tmp_path_factory):
    settings = make_settings(tiny_weights_dir, tmp_path_factory.mktemp("data"))
    with TestClient(create_app(settings)) as test_client:
        wait_until_ready(test_client)
        yield test_client


def pytest_configure(config):
    config.addinivalue_line("markers", "real_weights: needs the committed weights in weights/ (skipped without them)")
