"""What every training script shares: flags, seeding, checkpoints, the manifest and curves."""
import argparse
import os
import random
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from models.checkpoints import sha256_of, update_manifest  # shared with the server

REPO_ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = REPO_ROOT / "weights"
HELDOUT_DIR = REPO_ROOT / "data" / "heldout"


def default_data_dir() -> Path:
    """../shared/data beside the repo when present, else the repo's own data/ folder."""
    shared = REPO_ROOT.parent / "shared" / "data"
    return shared if shared.is_dir() else REPO_ROOT / "data"


def base_parser(description: str, epochs: int, batch_size: int, lr: float) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(), help="folder holding the datasets")
    parser.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR, help="where checkpoints and manifest go")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=lr, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N training examples (smoke tests)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores)"


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 1)


def save_model(model: torch.nn.Module, weights_dir: Path, *, name: str, task: str, architecture: str,
               config: dict, classes: list[str], metrics: dict, hyperparameters: dict,
               training_time_s: float, trained_on: str, default: bool, history: dict | None = None) -> dict:
    """Write weights/<name>.pt (a state_dict) and its manifest entry; return the entry."""
    weights_dir.mkdir(parents=True, exist_ok=True)
    path = weights_dir / f"{name}.pt"
    state = {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in model.state_dict().items()}
    torch.save(state, path)
    entry = {
        "name": name, "task": task, "default": default,
        "architecture": architecture, "config": config, "hyperparameters": hyperparameters,
        "file": path.name, "sha256": sha256_of(path), "classes": classes,
        "parameters": count_parameters(model), "metrics": metrics,
        "torch_version": torch.__version__, "training_time_s": training_time_s, "trained_on": trained_on,
        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if history:
        entry["curve"] = plot_curve(history, weights_dir / f"{name}.curve.png", title=name)
    update_manifest(weights_dir, entry)
    print(f"saved {path} ({path.stat().st_size / 1e6:.2f} MB), sha256 {entry['sha256'][:12]}..")
    return entry


def plot_curve(history: dict[str, list[float]], path: Path, title: str) -> str:
    """Plot loss and accuracy per epoch; returns the file name."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(history["train_loss"]) + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, history["train_loss"], label="train")
    if "test_loss" in history:
        ax_loss.plot(epochs, history["test_loss"], label="held-out")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title=f"{title}: loss")
    ax_acc.plot(epochs, history["train_acc"], label="train")
    ax_acc.plot(epochs, history["test_acc"], label="held-out")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title=f"{title}: accuracy")
    return save_figure(fig, (ax_loss, ax_acc), path)


def save_figure(fig, axes, path: Path) -> str:
    """Grid and legend on every axis, written to `path` and closed; returns the file name."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path.name


def progress(iterable, desc: str, disable: bool):
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, leave=False, disable=disable, dynamic_ncols=True)


def one_cycle(optimizer: torch.optim.Optimizer, max_lr: float, total_steps: int, warmup: float = 0.3):
    """One-cycle schedule; the warm-up keeps at least two steps so tiny runs (smoke tests) work too."""
    warmup = min(max(warmup, 2.0 / total_steps), 0.5)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=warmup)
