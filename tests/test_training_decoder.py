"""training/decoder.py: a smoke run writes the weights, curve, history and the manifest's asset entry; a missing
source stops with what to do."""
import json
from pathlib import Path

import pytest
import torch

from models.decoder import StyleDecoder
from training import decoder as script
from training import decoder_data

ROOT = Path(__file__).resolve().parents[1]
VGG = ROOT / "weights" / "vgg19_features_0-16.pth"


def test_smoke_run_writes_weights_and_the_asset_entry(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"models": {"m": {"name": "m"}}}))
    entry = script.main(["--iterations", "2", "--eval-every", "1", "--warmup", "1", "--batch-size", "2",
                         "--crop", "64", "--sources", "photos,paintings", "--weights-dir", str(tmp_path),
                         "--vgg", str(VGG), "--no-progress"])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["models"] == {"m": {"name": "m"}}  # the served models are left alone
    assert manifest["assets"]["style-decoder"] == entry
    assert entry["sha256"] == script.sha256_of(tmp_path / "style-decoder.pt")
    assert entry["encoder_sha256"] == script.sha256_of(VGG)
    assert set(entry["metrics"]["heldout_psnr_db"]) == {"chelsea", "coffee"}
    assert set(entry["metrics"]["heldout_psnr_db"]["coffee"]) == {"256", "512"}
    assert set(entry["data"]["sources"]) == {"photos", "paintings"} and not entry["data"]["wallpapers"]
    assert entry["command"].startswith("python -m training.decoder --iterations 2")
    assert (tmp_path / entry["curve"]).is_file() and (tmp_path / entry["history"]).is_file()
    model = StyleDecoder.from_file(tmp_path / "style-decoder.pt", **entry["config"])
    assert model(torch.zeros(1, 256, 3, 5)).shape == (1, 3, 12, 20)


def test_a_missing_source_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setattr(decoder_data, "PLASMA_DIR", tmp_path / "none")
    monkeypatch.setattr(decoder_data, "GNOME_DIR", tmp_path / "none")
    with pytest.raises(SystemExit, match="apt-get install plasma-workspace-wallpapers gnome-backgrounds"):
        script.load_training_set(["wallpapers"], tmp_path)
    with pytest.raises(SystemExit, match="cifar10_subset.npz not found"):
        script.load_training_set(["cifar"], tmp_path)
    with pytest.raises(SystemExit, match="unknown source"):
        script.load_training_set(["imagenet"], tmp_path)


def test_held_out_photos_are_never_trained_on():
    data = script.load_training_set(["photos", "paintings"], script.default_data_dir())
    names = {Path(image.name).stem for image in data.images}
    assert names and not names & set(script.HELDOUT)
