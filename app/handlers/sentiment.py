"""Sentence sentiment (SST-2): text -> token ids -> bi-LSTM."""
import torch

from app.handlers.base import ModelHandler
from models.sentiment import SentimentLSTM, pad_batch, tokenize


class SentimentHandler(ModelHandler):
    task = "sentiment"
    input_kind = "text"
    architectures = {"SentimentLSTM": SentimentLSTM}

    def sample_input(self) -> list[int]:
        return self.model.encode([])

    def decode_request(self, raw: str) -> list[int]:
        return self.model.encode(tokenize(raw))

    def forward(self, batch: list[list[int]]) -> torch.Tensor:
        ids, lengths = pad_batch(batch)
        return self.model(ids.to(self.device, non_blocking=True), lengths)
