"""Dataset readers. Everything comes back as numpy arrays; no torchvision dataset classes needed."""
import gzip
from pathlib import Path

import numpy as np


def read_idx(path: Path) -> np.ndarray:
    """Read an MNIST IDX file (optionally gzipped)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def load_mnist(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """split 'train' (60,000) or 'test' (10,000): uint8 images (N, 28, 28), int64 labels."""
    prefix = "train" if split == "train" else "t10k"
    raw = data_dir / "MNIST" / "raw"
    images = read_idx(raw / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(raw / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    return images, labels


def load_cifar_subset(data_dir: Path) -> dict[str, np.ndarray]:
    """The CIFAR-10 subset: x_train (8068, 32, 32, 3) uint8 RGB, y_train, x_test (1017, ...), y_test."""
    with np.load(data_dir / "cifar-10-subset" / "cifar10_subset.npz") as npz:
        return {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}


def load_sst2(data_dir: Path, split: str) -> tuple[list[str], np.ndarray]:
    """GLUE SST-2 'train' (67,349 phrases) or 'dev' (872 sentences): texts and 0/1 labels."""
    texts, labels = [], []
    with open(data_dir / "sentiment" / "SST-2" / f"{split}.tsv", encoding="utf-8") as f:
        next(f)
        for line in f:
            sentence, label = line.rstrip("\n").rsplit("\t", 1)
            texts.append(sentence.strip())
            labels.append(int(label))
    return texts, np.array(labels, dtype=np.int64)


def load_heldout(heldout_dir: Path, name: str) -> dict[str, np.ndarray]:
    """Held-out sets shipped with the repo: 'mnist-test', 'cifar-test', 'sst2-dev'."""
    with np.load(heldout_dir / f"{name}.npz") as npz:
        return {k: npz[k] for k in npz.files}
