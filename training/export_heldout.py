"""Copy the held-out evaluation sets into data/heldout/ so a clone can test without ../shared.

    python -m training.export_heldout --data-dir ../shared/data
"""
import argparse
from pathlib import Path

import numpy as np

from training.common import HELDOUT_DIR, default_data_dir
from training.data import load_cifar_subset, load_mnist, load_sst2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--out-dir", type=Path, default=HELDOUT_DIR)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)

    x, y = load_mnist(args.data_dir, "test")
    np.savez_compressed(args.out_dir / "mnist-test.npz", x=x, y=y)
    cifar = load_cifar_subset(args.data_dir)
    np.savez_compressed(args.out_dir / "cifar-test.npz", x=cifar["x_test"], y=cifar["y_test"])
    texts, labels = load_sst2(args.data_dir, "dev")
    np.savez_compressed(args.out_dir / "sst2-dev.npz", texts=np.array(texts), y=labels)
    for path in sorted(args.out_dir.glob("*.npz")):
        print(f"{path}: {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
