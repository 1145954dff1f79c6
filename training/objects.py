"""Train objects-cnn, a pre-activation ResNet, on the 8,068-image CIFAR-10 subset.

    python -m training.objects
    python -m training.objects --width 32 --epochs 100
"""
import torch
import torch.nn.functional as F
from torch import nn

from preprocessing.objects import normalise_cifar_uint8
from models.objects import CIFAR10_CLASSES, ObjectsResNet
from models.checkpoints import auto_device
from training.common import (Timer, base_parser, device_description, one_cycle, save_model,
                             seed_everything)
from training.data import load_cifar_subset
from training.loop import evaluate, log_epoch, tensor_batches, train_epoch


def parse_args():
    parser = base_parser(__doc__, epochs=200, batch_size=128, lr=0.1)
    parser.add_argument("--width", type=int, default=64, help="channels of the first stage (then x2, x4)")
    parser.add_argument("--blocks", type=int, default=2, help="residual blocks per stage")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--cutout", type=int, default=8, help="side of the erased square (0 = off)")
    parser.add_argument("--name", default="objects-cnn", help="model name in the manifest")
    return parser.parse_args()


def to_tensor(images, device) -> torch.Tensor:
    """uint8 (N, 32, 32, 3) RGB -> normalised float (N, 3, 32, 32), as the server does."""
    return normalise_cifar_uint8(images).to(device)


def augment(cutout: int, pad: int = 4):
    """Random crop with reflect padding, horizontal flip and cutout, on the batch's device."""

    def transform(x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        dev = x.device
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        rows = torch.randint(0, 2 * pad + 1, (n, 1), device=dev) + torch.arange(h, device=dev)
        cols = torch.randint(0, 2 * pad + 1, (n, 1), device=dev) + torch.arange(w, device=dev)
        x = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * pad))
        x = x.gather(3, cols[:, None, None, :].expand(n, c, h, w))
        flip = torch.rand(n, 1, 1, 1, device=dev) < 0.5
        x = torch.where(flip, x.flip(3), x)
        if cutout:
            cy = torch.randint(0, h, (n, 1, 1), device=dev)
            cx = torch.randint(0, w, (n, 1, 1), device=dev)
            ys = torch.arange(h, device=dev).view(1, h, 1)
            xs = torch.arange(w, device=dev).view(1, 1, w)
            hole = ((ys - cy).abs() <= cutout // 2) & ((xs - cx).abs() <= cutout // 2)
            x = x.masked_fill(hole.unsqueeze(1), 0.0)
        return x

    return transform


def main() -> None:
    args = parse_args()
    seed_everything(args.seed)
    device = auto_device(args.device)
    data = load_cifar_subset(args.data_dir)
    x_train, y_train = data["x_train"], data["y_train"]
    if args.limit:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
    x_train, x_test = to_tensor(x_train, device), to_tensor(data["x_test"], device)
    y_train, y_test = torch.from_numpy(y_train).to(device), torch.from_numpy(data["y_test"]).to(device)

    config = {"width": args.width, "blocks": args.blocks}
    model = ObjectsResNet(**config).to(device, memory_format=torch.channels_last)
    steps = args.epochs * ((len(x_train) + args.batch_size - 1) // args.batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                                weight_decay=args.weight_decay)
    scheduler = one_cycle(optimizer, args.lr, steps, warmup=0.15)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    print(f"== {args.name}: {args.epochs} epochs on {len(x_train)} images, {device_description(device)}")
    timer, history = Timer(), {}
    for epoch in range(1, args.epochs + 1):
        train = train_epoch(model, tensor_batches(x_train, y_train, args.batch_size, True, augment(args.cutout)),
                            optimizer, scheduler, loss_fn, device, f"{args.name} {epoch}", args.no_progress)
        test = evaluate(model, tensor_batches(x_test, y_test, 500, False), device)
        log_epoch(history, epoch, args.epochs, train, test)

    save_model(
        model, args.weights_dir, name=args.name, task="objects", architecture="ObjectsResNet", config=config,
        classes=CIFAR10_CLASSES, default=True, history=history,
        metrics={"dataset": "CIFAR-10 (subset, test_batch images 0..1016)", "split": "test", "size": len(x_test),
                 "accuracy": round(history["test_acc"][-1], 4)},
        hyperparameters={"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                         "optimizer": "SGD nesterov", "schedule": "one-cycle", "weight_decay": args.weight_decay,
                         "label_smoothing": args.label_smoothing, "augment": f"crop4+flip+cutout{args.cutout}",
                         "seed": args.seed, "train_size": len(x_train)},
        training_time_s=timer.seconds, trained_on=device_description(device),
    )


if __name__ == "__main__":
    main()
