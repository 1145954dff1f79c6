"""Train the MNIST digit classifiers: digits-mlp (784-128-10, sigmoid) and digits-cnn.

    python -m training.digits                 # both models
    python -m training.digits --arch cnn --epochs 20
    python -m training.digits --arch cnn --resume --epochs 2 --lr 5e-4   # fine-tune the committed checkpoint

The last 5,000 training images (55000..59999) are held out for calibration (training.calibrate). Each training
image also gets --framing-variants reframed copies (training/framing.py: edge cuts, marker and fine-pen strokes)
and --drawn-variants copies drawn on paper and read by the server's own pipeline, so the networks read digits
drawn off the canvas edge or with other pens as the server frames them.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.digits import DIGIT_CLASSES, MNIST_MEAN, MNIST_STD, DigitsCNN, DigitsMLP
from preprocessing.digits import normalise_mnist_uint8
from models.checkpoints import auto_device
from training.common import (Timer, base_parser, device_description, one_cycle, save_model,
                             seed_everything, sha256_of)
from training.data import load_mnist
from training.framing import framing_variants
from training.loop import evaluate, log_epoch, tensor_batches, train_epoch

MODELS = {
    "mlp": dict(name="digits-mlp", architecture="DigitsMLP", cls=DigitsMLP, config={"hidden": 128}, default=False),
    "cnn": dict(name="digits-cnn", architecture="DigitsCNN", cls=DigitsCNN, config={"width": 32, "dropout": 0.3},
                default=True),
}


def parse_args():
    parser = base_parser(__doc__, epochs=20, batch_size=128, lr=3e-3)
    parser.add_argument("--arch", choices=["mlp", "cnn", "both"], default="both")
    parser.add_argument("--mlp-epochs", type=int, default=30, help="epochs for the MLP (its own schedule)")
    parser.add_argument("--augment", type=float, default=1.0,
                        help="strength of the random affine augmentation for the CNN (0 = none)")
    parser.add_argument("--train-size", type=int, default=55_000,
                        help="train on the first N images; the rest are the calibration hold-out")
    parser.add_argument("--framing-variants", type=int, default=1,
                        help="reframed copies of each training image (edge cuts, other stroke widths)")
    parser.add_argument("--drawn-variants", type=int, default=0,
                        help="copies of each training image drawn on paper (cut by the edges, marker, fine pen) "
                             "and read by the server's own to_ink + mnist_normalise (training/framing.py)")
    parser.add_argument("--workers", type=int, default=2, help="processes making the drawn variants")
    parser.add_argument("--resume", action="store_true", help="start from the committed checkpoint (fine-tune)")
    return parser.parse_args()


def to_tensor(images, device) -> torch.Tensor:
    """uint8 (N, 28, 28) -> normalised float (N, 1, 28, 28), as the server does."""
    return normalise_mnist_uint8(images).to(device)


def random_affine(strength: float):
    """Small rotations, shifts, scalings and shears, applied to a whole batch on its device."""
    background = (0 - MNIST_MEAN) / MNIST_STD

    def transform(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        angle = (torch.rand(n, device=x.device) * 2 - 1) * 0.2 * strength          # +-11 degrees
        scale = 1 + (torch.rand(n, device=x.device) * 2 - 1) * 0.1 * strength
        shear = (torch.rand(n, device=x.device) * 2 - 1) * 0.1 * strength
        shift = (torch.rand(n, 2, device=x.device) * 2 - 1) * 0.12 * strength
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin + shear, shift[:, 0]], 1),
                             torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, x.shape, align_corners=False)
        return F.grid_sample(x - background, grid, align_corners=False, padding_mode="zeros") + background

    return transform


def train_one(kind: str, args, data, device) -> None:
    spec = MODELS[kind]
    seed_everything(args.seed)
    model = spec["cls"](**spec["config"])
    init = None
    if args.resume:
        checkpoint = args.weights_dir / f"{spec['name']}.pt"
        init = f"{checkpoint.name} sha256 {sha256_of(checkpoint)}"
        model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    model = model.to(device)
    x_train, y_train, x_test, y_test = data
    epochs = args.mlp_epochs if kind == "mlp" else args.epochs
    augment = random_affine(args.augment) if kind == "cnn" and args.augment > 0 else None
    steps = epochs * ((len(x_train) + args.batch_size - 1) // args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4 if kind == "cnn" else 0.0)
    scheduler = one_cycle(optimizer, args.lr, steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1 if kind == "cnn" else 0.0)

    print(f"== {spec['name']}: {epochs} epochs on {len(x_train)} images, {device_description(device)}")
    timer, history = Timer(), {}
    for epoch in range(1, epochs + 1):
        train = train_epoch(model, tensor_batches(x_train, y_train, args.batch_size, True, augment),
                            optimizer, scheduler, loss_fn, device, f"{spec['name']} {epoch}", args.no_progress)
        test = evaluate(model, tensor_batches(x_test, y_test, 1000, False), device)
        log_epoch(history, epoch, epochs, train, test)

    save_model(
        model, args.weights_dir, name=spec["name"], task="digits", architecture=spec["architecture"],
        config=spec["config"], classes=DIGIT_CLASSES, default=spec["default"], history=history,
        metrics={"dataset": "MNIST", "split": "test", "size": len(x_test), "accuracy": round(history["test_acc"][-1], 4)},
        hyperparameters={"epochs": epochs, "batch_size": args.batch_size, "lr": args.lr, "optimizer": "AdamW",
                         "schedule": "one-cycle", "augment": args.augment if kind == "cnn" else 0.0,
                         "seed": args.seed,
                         "train_size": len(x_train) // (1 + args.framing_variants + args.drawn_variants),
                         "framing_variants": args.framing_variants, "drawn_variants": args.drawn_variants,
                         "calibration_holdout": f"MNIST train {args.train_size}..59999", "init": init},
        training_time_s=timer.seconds, trained_on=device_description(device),
    )


def main() -> None:
    args = parse_args()
    device = auto_device(args.device)
    x_train, y_train = load_mnist(args.data_dir, "train")
    x_test, y_test = load_mnist(args.data_dir, "test")
    x_train, y_train = x_train[: args.train_size], y_train[: args.train_size]
    if args.limit:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
    x_parts, y_parts = [x_train], [y_train]
    if args.framing_variants:
        x_parts.append(framing_variants(x_train, args.framing_variants, args.seed, not args.no_progress))
        y_parts.append(np.repeat(y_train, args.framing_variants))
    if args.drawn_variants:
        x_parts.append(framing_variants(x_train, args.drawn_variants, args.seed, not args.no_progress, drawn=True,
                                        workers=args.workers))
        y_parts.append(np.repeat(y_train, args.drawn_variants))
    x_train, y_train = np.concatenate(x_parts), np.concatenate(y_parts)
    data = (to_tensor(x_train, device), torch.from_numpy(y_train).to(device),
            to_tensor(x_test, device), torch.from_numpy(y_test).to(device))
    for kind in (["mlp", "cnn"] if args.arch == "both" else [args.arch]):
        train_one(kind, args, data, device)


if __name__ == "__main__":
    main()
