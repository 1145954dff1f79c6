"""Sentence sentiment (SST-2): text -> token ids -> bi-LSTM."""
import torch

from preprocessing.errors import UndecodableInput
from app.serving.handlers.base import ModelHandler
from models import select_architectures
from models.sentiment import pad_batch, tokenize


class SentimentHandler(ModelHandler):
    task = "sentiment"
    input_kind = "text"
    architectures = select_architectures("SentimentLSTM")
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

    def split(self, tensors: dict[str, torch.Tensor]) -> list[list[int]]:
        ids, lengths = tensors["ids"], tensors["lengths"]
        width, vocabulary = ids.shape[1], self.model.embedding.num_embeddings
        if width > self.settings.max_text_chars:  # a token is at least one character of a text
            raise UndecodableInput(f"input 'ids' is {width} tokens wide; the limit is {self.settings.max_text_chars} "
                           "(MAX_TEXT_CHARS)")
        if lengths.numel() and not bool(((lengths >= 1) & (lengths <= width)).all()):
            raise UndecodableInput(f"input 'lengths': each length must be 1 to the width of 'ids' ({width})")
        if ids.numel() and not bool(((ids >= 0) & (ids < vocabulary)).all()):
            raise UndecodableInput(f"input 'ids': token ids must be 0 to {vocabulary - 1} (the model's vocabulary)")
        return [row[:length].tolist() for row, length in zip(ids, lengths.tolist())]
