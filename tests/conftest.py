"""Shared fixtures: a weights dir of tiny randomly-initialised models, and a running app over it."""
import hashlib
import json
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from models.digits import DIGIT_CLASSES, DigitsCNN, DigitsMLP
from models.objects import CIFAR10_CLASSES, ObjectsResNet
from models.sentiment import PAD, SENTIMENT_CLASSES, UNK, SentimentLSTM

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
ARCHITECTURES = {"DigitsCNN": DigitsCNN, "DigitsMLP": DigitsMLP, "ObjectsResNet": ObjectsResNet,
                 "SentimentLSTM": SentimentLSTM}


def build_tiny_model(architecture: str, config: dict) -> torch.nn.Module:
    model = ARCHITECTURES[architecture](**config)
    if isinstance(model, SentimentLSTM):
        fillers = [f"word{i}" for i in range(config["vocab_size"] - len(SENTIMENT_WORDS))]
        model.set_vocab(SENTIMENT_WORDS + fillers)
    return model


def write_tiny_weights(weights_dir: Path, seed: int = 0) -> Path:
    """Seeded random instances of all four architectures plus a manifest in the documented format."""
    torch.manual_seed(seed)
    weights_dir.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name, (task, architecture, config, classes, default) in TINY_MODELS.items():
        model = build_tiny_model(architecture, config)
        path = weights_dir / f"{name}.pt"
        torch.save(model.state_dict(), path)
        entries[name] = {
            "name": name, "task": task, "default": default, "architecture": architecture, "config": config,
            "hyperparameters": {"epochs": 0, "seed": seed}, "file": path.name,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "classes": classes,
            "parameters": sum(p.numel() for p in model.parameters()),
            "metrics": {"dataset": "none", "split": "test", "size": 0, "accuracy": 0.0},
            "torch_version": torch.__version__, "training_time_s": 0.0, "trained_at": "2026-01-01T00:00:00+00:00",
        }
    (weights_dir / "manifest.json").write_text(json.dumps({"models": entries}, indent=2))
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
