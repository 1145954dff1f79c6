"""The handler interface every model family implements, and what classifiers share."""
import logging
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from app.serving.backends import Runner, choose_runner
from app.core.config import Settings
from preprocessing.errors import UndecodableInput
from app.serving.loading import StartupError, load_state_dict
from preprocessing.decoding import declared_pixels, memory_returned_after, open_image

logger = logging.getLogger(__name__)

SCORE_DECIMALS = 6
MAX_REASON_CHARS = 300


DECODE_AT_LEAST = 512  # px per side: far more than 28x28 digits or 32x32 objects need; big JPEGs decode smaller


def calibration_of(entry: dict) -> dict | None:
    """The entry's `calibration` block (written by training.calibrate), or None when it has none or when it was
    fitted to other weights (a stale temperature would make the scores lie); raises StartupError when malformed."""
    block = entry.get("calibration")
    if block is None:
        return None
    where = f"manifest: model '{entry.get('name')}': calibration"
    if not isinstance(block, dict):
        raise StartupError(f"{where} must be an object")
    temperature = block.get("temperature", 1.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            math.isfinite(temperature) and temperature > 0):
        raise StartupError(f"{where}: temperature must be a positive number, not {temperature!r}")
    fitted_to = block.get("weights_sha256")
    if fitted_to is not None and fitted_to != entry.get("sha256"):
        logger.warning("%s was fitted to other weights (sha256 %s..); serving uncalibrated scores until "
                       "python -m training.calibrate --models %s is run", where, str(fitted_to)[:12], entry.get("name"))
        return None
    return block


class ModelHandler(ABC):
    """One manifest entry: builds its network, decodes one input, predicts a batch, encodes one answer."""

    task: ClassVar[str]
    input_kind: ClassVar[str]  # "image" | "text"
    architectures: ClassVar[dict[str, type[nn.Module]]] = {}
    # The network's named inputs as `collate` makes them, and their variable axes: the ONNX export's signature.
    onnx_dynamic_axes: ClassVar[dict[str, dict[int, str]]]
    cpu_inputs: ClassVar[frozenset[str]] = frozenset()  # inputs PyTorch takes on the CPU even on CUDA
    # This model family's own batching, when it differs from BATCH_MAX_SIZE / BATCH_MAX_WAIT_MS (None: those);
    # MODEL_BATCHING overrides both per model at deploy time.
    batch_max_size: ClassVar[int | None] = None
    batch_max_wait_ms: ClassVar[float | None] = None

    def __init__(self, entry: dict, weights_dir: Path, settings: Settings):
        self.entry = entry
        self.name: str = entry["name"]
        self.classes: list[str] = entry["classes"]
        self.weights_path = weights_dir / entry["file"]
        self.settings = settings
        self.device: torch.device | None = None
        self.model: nn.Module | None = None
        self.runner: Runner | None = None  # torch or ONNX Runtime (app/serving/backends.py), chosen by setup
        self.inference: dict | None = None  # which runner and why, for GET /v1/models
        self.calibration = calibration_of(entry)
        # Scores are softmax(logits / T): T fitted on held-out data so that a score means what it says.
        self.temperature: float = float(self.calibration.get("temperature", 1.0)) if self.calibration else 1.0

    @property
    def parameters(self) -> int | None:
        if self.model is None:
            return self.entry.get("parameters")
        return sum(p.numel() for p in self.model.parameters())

    def setup(self, device: torch.device) -> None:
        """Build the network from the manifest entry, load its weights, move it to `device`, pick the backend
        (INFERENCE_BACKEND; an ONNX export is checked against PyTorch first), check it runs."""
        try:
            model = self.architectures[self.entry["architecture"]](**self.entry["config"])
            model.load_state_dict(load_state_dict(self.weights_path))
        except StartupError:
            raise
        except Exception as exc:  # wrong config or a state_dict from another architecture
            reason = str(exc).replace("\n", " ")[:MAX_REASON_CHARS]  # torch lists every mismatched key
            raise StartupError(f"{self.weights_path}: does not fit {self.entry['architecture']}"
                               f"({self.entry['config']}): {reason}") from exc
        self.model = model.to(device).eval()
        self.device = device
        self.runner, self.inference = choose_runner(self, device)
        self._check_output_width()

    def _check_output_width(self) -> None:
        """One warm-up pass, which also proves the network has one output per manifest class."""
        probs = self.predict([self.sample_input()])
        if probs.shape != (1, len(self.classes)):
            raise StartupError(f"{self.weights_path}: the network gives {tuple(probs.shape)} outputs for one input "
                               f"but the manifest lists {len(self.classes)} classes")

    @abstractmethod
    def sample_input(self) -> Any:
        """A decoded input of the right shape, for the warm-up pass."""

    def decodes_inline(self, raw: Any) -> bool:
        """Whether decoding `raw` is so cheap that a worker thread would cost more than it saves."""
        return True

    @abstractmethod
    def decode_request(self, raw: Any) -> Any:
        """One raw input (image bytes | text) -> one preprocessed CPU item; raises InputError."""

    @abstractmethod
    def collate(self, batch: list[Any]) -> dict[str, torch.Tensor]:
        """Decoded items -> the network's named inputs (CPU tensors): the keyword arguments of its forward and the
        inputs of its ONNX export."""

    @abstractmethod
    def split(self, tensors: dict[str, torch.Tensor]) -> list[Any]:
        """The inverse of `collate`: the network's named inputs for N items (already of its shapes and dtypes,
        as a client of the Open Inference Protocol sends them) -> N decoded items; raises UndecodableInput for values
        the network cannot take."""

    def forward(self, batch: list[Any]) -> torch.Tensor:
        """Logits (N, C) for a list of decoded items, from the chosen runner."""
        return self.runner(self.collate(batch))

    def predict(self, batch: list[Any]) -> torch.Tensor:
        """Calibrated probabilities (N, C) on the CPU: softmax(logits / temperature)."""
        with torch.inference_mode():
            return torch.softmax(self.forward(batch).float() / self.temperature, dim=1).cpu()

    def encode_response(self, probs: torch.Tensor, top_k: int) -> dict:
        scores, indices = torch.topk(probs, k=min(top_k, len(self.classes)))
        top = [{"label": self.classes[i], "score": round(s, SCORE_DECIMALS)}
               for s, i in zip(scores.tolist(), indices.tolist())]
        return {"label": top[0]["label"], "score": top[0]["score"], "top": top}


class ImageClassifierHandler(ModelHandler):
    """Classifiers whose input is one image file, turned into a fixed-size tensor by `to_tensor`."""

    input_kind = "image"
    input_shape: ClassVar[tuple[int, ...]]
    onnx_dynamic_axes = {"x": {0: "batch"}}

    @staticmethod
    @abstractmethod
    def to_tensor(image) -> torch.Tensor:
        """A PIL image -> the network's normalised input tensor."""

    def sample_input(self) -> torch.Tensor:
        return torch.zeros(self.input_shape)

    def decodes_inline(self, raw: bytes | str) -> bool:
        # Small images (a canvas, a thumbnail) decode in well under a millisecond; big ones go to threads.
        if not isinstance(raw, bytes):
            return False
        pixels = declared_pixels(raw)
        return pixels is not None and pixels <= self.settings.inline_decode_pixels

    def decode_request(self, raw: bytes) -> torch.Tensor:
        with memory_returned_after(declared_pixels(raw)):
            return self.to_tensor(open_image(raw, self.settings.max_image_pixels, at_least=DECODE_AT_LEAST))

    def collate(self, batch: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"x": torch.stack(batch)}

    def split(self, tensors: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        x = tensors["x"]
        if not bool(torch.isfinite(x).all()):
            raise UndecodableInput("input 'x' holds NaN or infinite values")
        return list(x.unbind(0))
