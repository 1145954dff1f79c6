"""Each training script, run as a newcomer would on a tiny slice, writes a checkpoint the server loads."""
import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import make_settings, wait_until_ready
from training.common import HELDOUT_DIR, REPO_ROOT, sha256_of
from training.data import load_heldout

pytestmark = pytest.mark.slow


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A miniature of ../shared/data in its own layout, built from the held-out sets the repo ships."""
    root = tmp_path_factory.mktemp("data")
    mnist, cifar, sst = (load_heldout(HELDOUT_DIR, n) for n in ("mnist-test", "cifar-test", "sst2-dev"))
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, sl in (("train", slice(0, 600)), ("t10k", slice(600, 800))):
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", mnist["x"][sl])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", mnist["y"][sl])
    (root / "cifar-10-subset").mkdir()
    np.savez(root / "cifar-10-subset" / "cifar10_subset.npz", x_train=cifar["x"][:300], y_train=cifar["y"][:300],
             x_test=cifar["x"][300:400], y_test=cifar["y"][300:400])
    sst2 = root / "sentiment" / "SST-2"
    sst2.mkdir(parents=True)
    for split, sl in (("train", slice(0, 600)), ("dev", slice(600, 872))):
        rows = [f"{text} \t{label}\n" for text, label in zip(sst["texts"][sl], sst["y"][sl])]
        (sst2 / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(rows), encoding="utf-8")
    return root


SCRIPTS = {
    "digits": (["--epochs", "1", "--mlp-epochs", "1"], ["digits-mlp", "digits-cnn"]),
    "objects": (["--epochs", "1", "--width", "8", "--blocks", "1"], ["objects-cnn"]),
    "sentiment": (["--epochs", "1", "--hidden", "16", "--layers", "1", "--glove-top", "500"], ["sentiment-lstm"]),
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_training_script_writes_a_checkpoint_the_server_loads(script, data_dir, tmp_path):
    flags, names = SCRIPTS[script]
    weights_dir = tmp_path / "weights"
    command = [sys.executable, "-m", f"training.{script}", "--data-dir", str(data_dir),
               "--weights-dir", str(weights_dir), "--no-progress", "--device", "cpu", *flags]
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "epoch   1/1" in run.stdout

    manifest = json.loads((weights_dir / "manifest.json").read_text())["models"]
    assert sorted(manifest) == sorted(names)
    for name in names:
        entry = manifest[name]
        assert entry["sha256"] == sha256_of(weights_dir / entry["file"])
        assert (weights_dir / entry["curve"]).stat().st_size > 1000
        assert 0.0 <= entry["metrics"]["accuracy"] <= 1.0 and entry["metrics"]["size"] > 0
        assert entry["torch_version"] and entry["training_time_s"] >= 0

    with TestClient(create_app(make_settings(weights_dir, tmp_path / "var"))) as client:
        wait_until_ready(client)
        assert sorted(m["name"] for m in client.get("/v1/models").json()["models"]) == sorted(names)
        task = manifest[names[0]]["task"]
        if task == "sentiment":
            response = client.post("/v1/sentiment/predict", json={"text": "a fine , moving film"})
        else:
            image = tmp_path / "input.png"
            from PIL import Image
            pixels = load_heldout(HELDOUT_DIR, "mnist-test" if task == "digits" else "cifar-test")["x"][0]
            Image.fromarray(pixels).save(image)
            response = client.post(f"/v1/{task}/predict", files={"file": image.open("rb")})
        assert response.status_code == 200, response.text
        assert response.json()["model"] in names


def test_drawn_framing_variants_keep_their_label_and_do_not_depend_on_workers(monkeypatch):
    """training/framing.py's drawn variants (ink on paper, cut by the edges, marker or fine pen, read back by the
    server's own to_ink) must still be the digit they were drawn from, and the same whatever the worker count."""
    import torch

    from models.digits import DigitsCNN
    from preprocessing.digits import normalise_mnist_uint8
    from training import framing
    from training.framing import framing_variants

    monkeypatch.setattr(framing, "DRAWN_BLOCK", 100)  # three blocks, so two workers share them

    mnist = load_heldout(HELDOUT_DIR, "mnist-test")
    x, y = mnist["x"][:300], mnist["y"][:300]
    one = framing_variants(x, 1, seed=3, progress=False, cache_dir=None, drawn=True, workers=1)
    assert one.shape == (300, 28, 28) and one.dtype == np.uint8
    assert np.array_equal(one, framing_variants(x, 1, seed=3, progress=False, cache_dir=None, drawn=True, workers=2))
    assert np.mean(np.abs(one.astype(int) - x.astype(int)) > 60) > 0.05  # reframed, not a copy

    manifest = json.loads((REPO_ROOT / "weights" / "manifest.json").read_text())["models"]["digits-cnn"]
    model = DigitsCNN(**manifest["config"]).eval()
    model.load_state_dict(torch.load(REPO_ROOT / "weights" / manifest["file"], map_location="cpu", weights_only=True))
    with torch.no_grad():
        read = model(normalise_mnist_uint8(one)).argmax(1).numpy()
    assert np.mean(read == y) >= 0.95, f"only {np.mean(read == y):.1%} of the drawn variants read as drawn"
