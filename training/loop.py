"""The epoch loop shared by the scripts: batches in, loss and accuracy out."""
from collections.abc import Callable, Iterable
from contextlib import nullcontext

import torch
from torch import nn

from training.common import progress

Batch = tuple[tuple[torch.Tensor, ...], torch.Tensor]


def _autocast(device: torch.device):
    # bf16 autocast on CUDA speeds the conv nets up; CPU training stays in float32.
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def train_epoch(model: nn.Module, batches: Iterable[Batch], optimizer: torch.optim.Optimizer,
                scheduler, loss_fn: Callable, device: torch.device, desc: str,
                quiet: bool) -> tuple[float, float]:
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    bar = progress(batches, desc, disable=quiet)
    for inputs, targets in bar:
        with _autocast(device):
            logits = model(*inputs)
            loss = loss_fn(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += loss.item() * len(targets)
        correct += (logits.argmax(1) == targets).sum().item()
        seen += len(targets)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}")
    return total_loss / seen, correct / seen


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Iterable[Batch], device: torch.device) -> tuple[float, float]:
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for inputs, targets in batches:
        with _autocast(device):
            logits = model(*inputs).float()
        total_loss += nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        correct += (logits.argmax(1) == targets).sum().item()
        seen += len(targets)
    return total_loss / seen, correct / seen


def tensor_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool,
                   transform: Callable | None = None):
    """Mini-batches of in-memory tensors (already on the device); `transform` augments on the device."""
    order = torch.randperm(len(x), device=x.device) if shuffle else torch.arange(len(x), device=x.device)
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        xb = x[idx]
        yield ((transform(xb) if transform else xb),), y[idx]


def log_epoch(history: dict, epoch: int, epochs: int, train: tuple[float, float], test: tuple[float, float]) -> None:
    for key, value in zip(("train_loss", "train_acc", "test_loss", "test_acc"), (*train, *test)):
        history.setdefault(key, []).append(value)
    print(f"epoch {epoch:3d}/{epochs}  train loss {train[0]:.4f} acc {train[1]:.4f}  "
          f"held-out loss {test[0]:.4f} acc {test[1]:.4f}", flush=True)
