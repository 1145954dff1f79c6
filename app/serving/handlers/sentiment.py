"""Sentence sentiment (SST-2): text -> token ids -> bi-LSTM."""
import torch

from app.serving.handlers.base import ModelHandler
from models.sentiment import SentimentLSTM, pad_batch, tokenize


class SentimentHandler(ModelHandler):
    task = "sentiment"
    input_kind = "text"
    architectures = {"SentimentLSTM": SentimentLSTM}
    # Padded ids + lengths: exported with both axes variable; ONNX's LSTM takes the lengths as sequence_lens,
    # which is what packing does in PyTorch (the backward direction starts at each sentence's last word).
    onnx_dynamic_axes = {"ids": {0: "batch", 1: "sequence"}, "lengths": {0: "batch"}}
    cpu_inputs = frozenset({"lengths"})

    def sample_input(self) -> list[int]:
        return self.model.encode([])

    def decode_request(self, raw: str) -> list[int]:
        return self.model.encode(tokenize(raw))

    def collate(self, batch: list[list[int]]) -> dict[str, torch.Tensor]:
        ids, lengths = pad_batch(batch)
        return {"ids": ids, "lengths": lengths}
