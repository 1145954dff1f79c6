"""Sentence sentiment: a bi-directional LSTM over GloVe word vectors.

The vocabulary travels inside the state_dict (as extra state), so a checkpoint is
self-contained: serving needs neither the GloVe package nor the training data.
"""
import re

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

SENTIMENT_CLASSES = ["negative", "positive"]
PAD, UNK = "<pad>", "<unk>"

# SST-2 is lower-cased and tokenised PTB-style ("it 's", "does n't", "( a )").
_CONTRACTIONS = re.compile(r"(?i)\b(\w+)(n't|'s|'re|'ve|'ll|'d|'m)\b")
_TOKEN = re.compile(r"n't|'\w+|[\w\-]+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Split raw text the way SST-2 was tokenised."""
    text = text.lower().replace("\u2019", "'").replace("`", "'")
    text = _CONTRACTIONS.sub(r"\1 \2", text)
    return _TOKEN.findall(text)


class SentimentLSTM(nn.Module):
    def __init__(self, vocab_size: int, embed_dim: int = 50, hidden: int = 128, layers: int = 1,
                 dropout: float = 0.5, num_classes: int = 2):
        super().__init__()
        self.vocab: list[str] = [PAD, UNK] + [""] * (vocab_size - 2)
        self.index: dict[str, int] = {}
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=layers, batch_first=True, bidirectional=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(4 * hidden, num_classes)

    # The vocabulary is stored in the state_dict, so torch.load(weights_only=True) restores it.
    def get_extra_state(self):
        return {"vocab": self.vocab}

    def set_extra_state(self, state):
        self.set_vocab(state["vocab"])

    def set_vocab(self, vocab: list[str]) -> None:
        if len(vocab) != self.embedding.num_embeddings:
            raise ValueError(f"vocabulary has {len(vocab)} words, embedding has {self.embedding.num_embeddings} rows")
        self.vocab = list(vocab)
        self.index = {word: i for i, word in enumerate(self.vocab)}

    def encode(self, tokens: list[str]) -> list[int]:
        unk = self.index.get(UNK, 1)
        return [self.index.get(t, unk) for t in tokens] or [unk]

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids: (N, T) padded with 0; lengths: (N,) on the CPU, each >= 1."""
        x = self.dropout(self.embedding(ids))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        mask = (ids != 0).unsqueeze(-1)
        max_pool = out.masked_fill(~mask, float("-inf")).max(dim=1).values
        mean_pool = (out * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return self.classifier(self.dropout(torch.cat([max_pool, mean_pool], dim=1)))


def pad_batch(sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists with 0; returns (ids, lengths)."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    ids = torch.zeros(len(sequences), int(lengths.max()), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return ids, lengths
