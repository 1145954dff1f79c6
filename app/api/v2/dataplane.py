"""The Open Inference Protocol over the model registry: names, signatures, inputs to items, outputs.

Each classifier takes one of two input sets: its encoded input (`image`: BYTES elements that are PNG/JPEG/...
files, or base64 text in JSON; `text`: BYTES elements of UTF-8 text), preprocessed exactly as /v1 does; or the
network's own tensors (`x` for the image models, `ids` + `lengths` for sentiment), as `collate` makes them. It
answers `probabilities` (FP32 [N, classes], calibrated like /v1's scores) and `label` (BYTES [N]). Every item goes
through the model's dynamic batcher on its own, so a v2 request shares forward passes with /v1 requests.
"""
import json
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np
import torch
from pydantic import ValidationError

from app.api.inference import Inputs, decode_all, predict_each
from app.api.v2.schemas import InferenceRequest, MetadataTensor, RequestInput, RequestOutput
from app.api.v2.tensors import BYTES, NUMPY_DTYPES, Output, Tensor, from_binary, from_json
from app.core.config import Settings
from app.core.errors import BadInput, NotFound
from preprocessing.decoding import decode_base64_image
from app.serving.handlers.base import ModelHandler
from app.serving.registry import ModelRegistry, ServedModel

MODEL_VERSION = "1"  # every model serves one version, the manifest's weights
PROBABILITIES, LABEL = "probabilities", "label"
PLATFORMS = {"torch": "pytorch_libtorch", "onnxruntime": "onnxruntime_onnx"}  # Triton's platform names
ENCODED_INPUT = {"image": "image", "text": "text"}  # handler.input_kind -> the encoded input's name
FLOAT_TYPES = ("FP16", "FP32", "FP64")
INTEGER_TYPES = tuple(name for name in NUMPY_DTYPES if name.startswith(("INT", "UINT")))
_V2_DATATYPE = {torch.float32: "FP32", torch.int64: "INT64"}


def resolve(registry: ModelRegistry, name: str, version: str | None) -> ModelHandler:
    """A model by its name, or by its task's name (that task's default model); 404 with the choices."""
    handler = registry.handlers.get(name)
    if handler is None and name in registry.defaults:
        handler = registry.handlers[registry.defaults[name]]
    if handler is None:
        raise NotFound(f"unknown model '{name}'; models: {', '.join(registry.handlers)}")
    if version is not None and version != MODEL_VERSION:
        raise NotFound(f"model '{handler.name}' has no version '{version}'; its versions: {MODEL_VERSION}")
    return handler


@dataclass(frozen=True)
class Signature:
    encoded: MetadataTensor
    tensors: list[MetadataTensor]
    outputs: list[MetadataTensor]

    def accepted(self) -> str:
        tensors = " + ".join(f"'{t.name}' ({t.datatype} {t.shape})" for t in self.tensors)
        return f"either '{self.encoded.name}' (BYTES [-1], one element per input) or {tensors}"


def signature_of(handler: ModelHandler) -> Signature:
    """From the network's named inputs for one sample item, with the export's variable axes as -1."""
    sample = handler.collate([handler.sample_input()])
    tensors = [MetadataTensor(name=name, datatype=_V2_DATATYPE[tensor.dtype],
                              shape=[-1 if axis in handler.onnx_dynamic_axes.get(name, {}) else size
                                     for axis, size in enumerate(tensor.shape)])
               for name, tensor in sample.items()]
    return Signature(
        encoded=MetadataTensor(name=ENCODED_INPUT[handler.input_kind], datatype=BYTES, shape=[-1]),
        tensors=tensors,
        outputs=[MetadataTensor(name=PROBABILITIES, datatype="FP32", shape=[-1, len(handler.classes)]),
                 MetadataTensor(name=LABEL, datatype=BYTES, shape=[-1])])


def model_metadata(handler: ModelHandler) -> dict:
    signature = signature_of(handler)
    return {"name": handler.name, "versions": [MODEL_VERSION], "platform": PLATFORMS[handler.inference["backend"]],
            "inputs": [t.model_dump() for t in (signature.encoded, *signature.tensors)],
            "outputs": [t.model_dump() for t in signature.outputs]}


# ------------------------------------------------------------------------------------------------ request

def parse_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, bytes]:
    """The body -> the JSON inference request and the binary data after it (binary tensor data extension)."""
    split = len(body)
    if header_length is not None:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            raise BadInput(f"Inference-Header-Content-Length is '{header_length}' but must be the byte length of "
                           f"the JSON at the start of the {len(body)}-byte body")
        split = int(header_length)
    try:
        document = json.loads(body[:split])
    except (ValueError, RecursionError) as exc:
        where = f" ({exc.msg} at character {exc.pos})" if isinstance(exc, json.JSONDecodeError) else ""
        raise BadInput(f"the inference request is not valid JSON{where}") from None
    if not isinstance(document, dict):
        raise BadInput("the inference request must be a JSON object with 'inputs'")
    try:
        return InferenceRequest.model_validate(document), body[split:]
    except ValidationError as exc:
        raise BadInput("; ".join(f"{_where(e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False))) from None


def _where(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "request"


def read_tensors(inputs: list[RequestInput], binary: bytes) -> list[Tensor]:
    """Each input from its JSON `data` or from its slice of the binary data, in the order of the inputs."""
    tensors, offset = [], 0
    for given in inputs:
        size = (given.parameters or {}).get("binary_data_size")
        if size is None:
            if given.data is None:
                raise BadInput(f"input '{given.name}' has no 'data' and no binary_data_size parameter")
            tensors.append(from_json(given.name, given.datatype, given.shape, given.data))
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BadInput(f"input '{given.name}': binary_data_size must be a byte count, not {size!r}")
        if offset + size > len(binary):
            raise BadInput(f"input '{given.name}' says {size} bytes of binary data follow but only "
                           f"{len(binary) - offset} are left after the JSON")
        tensors.append(from_binary(given.name, given.datatype, given.shape, binary[offset:offset + size]))
        offset += size
    if offset != len(binary):
        raise BadInput(f"{len(binary) - offset} bytes after the JSON belong to no input's binary_data_size "
                       "(is Inference-Header-Content-Length right?)")
    return tensors


async def items_of(served: ServedModel, tensors: list[Tensor], settings: Settings,
                   limiter: anyio.CapacityLimiter) -> list:
    """The request's inputs -> decoded items for the batcher: the encoded input, or the network's tensors."""
    signature = signature_of(served.handler)
    if input_set(served.handler, signature, tensors) == "encoded":
        return await _decoded(served, tensors[0], settings, limiter)
    return served.handler.split(_network_inputs(signature, {t.name: t for t in tensors}, settings))


def input_set(handler: ModelHandler, signature: Signature, tensors: list[Tensor]) -> str:
    """Which of the model's two input sets the request uses: "encoded" or "tensors"; 400 for anything else."""
    names = [tensor.name for tensor in tensors]
    if len(set(names)) != len(names):
        raise BadInput(f"an input name appears twice: {', '.join(names)}")
    if names == [signature.encoded.name]:
        return "encoded"
    if set(names) == {t.name for t in signature.tensors}:
        return "tensors"
    raise BadInput(f"model '{handler.name}' takes {signature.accepted()}; this request gave "
                   f"{', '.join(repr(n) for n in names)}")


async def _decoded(served: ServedModel, tensor: Tensor, settings: Settings, limiter: anyio.CapacityLimiter) -> list:
    if tensor.datatype != BYTES:
        raise BadInput(f"input '{tensor.name}' must be BYTES (one encoded element per input), not {tensor.datatype}")
    if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise BadInput(f"input '{tensor.name}' must have shape [N] (or [N, 1]), not {tensor.shape}")
    _check_batch(tensor.name, tensor.batch_size, settings)
    handler = served.handler
    if handler.input_kind == "text":
        texts = [_text(tensor.name, index, value, settings) for index, value in enumerate(tensor.values)]
        _check_total_chars(texts, settings)
        return await decode_all(served, Inputs(texts, tensor.name, is_batch=True), handler.decode_request, limiter)

    def decode(raw: bytes | str):  # base64 text in JSON, the file's own bytes in binary data: as /v1 takes them
        return handler.decode_request(decode_base64_image(raw) if isinstance(raw, str) else raw)

    return await decode_all(served, Inputs(list(tensor.values), tensor.name, is_batch=True), decode, limiter)


def _text(name: str, index: int, value: bytes | str, settings: Settings) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadInput(f"{name}[{index}]: not valid UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not value.strip():
        raise BadInput(f"{name}[{index}]: the text is empty or only whitespace")
    if len(value) > settings.max_text_chars:
        raise BadInput(f"{name}[{index}]: the text is {len(value):,} characters; the limit is "
                       f"{settings.max_text_chars:,} (MAX_TEXT_CHARS)")
    return value


def _check_total_chars(texts: list[str], settings: Settings) -> None:
    total = sum(len(text) for text in texts)
    if total > settings.max_request_chars:
        raise BadInput(f"the texts of this request have {total:,} characters in all; one request may carry at "
                       f"most {settings.max_request_chars:,} (MAX_REQUEST_CHARS): send the batch in smaller parts")


def _check_batch(name: str, count: int, settings: Settings) -> None:
    if not 1 <= count <= settings.max_batch_items:
        raise BadInput(f"input '{name}' holds {count} inputs; one request may carry 1 to "
                       f"{settings.max_batch_items} (MAX_BATCH_ITEMS)")


def _network_inputs(signature: Signature, given: dict[str, Tensor], settings: Settings) -> dict[str, torch.Tensor]:
    """The network's named inputs, checked against the signature's datatypes and shapes; one batch size."""
    inputs, batch = {}, None
    for expected in signature.tensors:
        tensor = given[expected.name]
        accepted = FLOAT_TYPES if expected.datatype == "FP32" else INTEGER_TYPES
        if tensor.datatype not in accepted:
            raise BadInput(f"input '{tensor.name}' must be {expected.datatype}, not {tensor.datatype}")
        fixed = all(want in (-1, got) for want, got in zip(expected.shape, tensor.shape))
        if len(tensor.shape) != len(expected.shape) or not fixed:
            raise BadInput(f"input '{tensor.name}' must have shape {expected.shape} (-1: any size), not {tensor.shape}")
        if batch is not None and tensor.shape[0] != batch:
            raise BadInput(f"the inputs disagree on the batch size: {batch} and {tensor.shape[0]}")
        batch = tensor.shape[0]
        _check_batch(tensor.name, batch, settings)
        target = np.float32 if expected.datatype == "FP32" else np.int64
        with np.errstate(over="ignore", invalid="ignore"):
            inputs[expected.name] = torch.from_numpy(np.array(tensor.values, dtype=target))
    return inputs


# ----------------------------------------------------------------------------------------------- response

async def infer(served: ServedModel, request: InferenceRequest, binary: bytes, settings: Settings,
                limiter: anyio.CapacityLimiter) -> tuple[dict, list[Output]]:
    """The response's JSON header and its outputs (the caller appends the binary ones after the header)."""
    tensors = read_tensors(request.inputs, binary)
    input_set(served.handler, signature_of(served.handler), tensors)  # the request's own mistakes first,
    outputs_wanted = requested_outputs(request, len(served.handler.classes))  # before any decoding
    items = await items_of(served, tensors, settings, limiter)
    probabilities = torch.stack(await predict_each(served, items)).numpy()
    outputs = [make_output(served.handler, probabilities, *wanted) for wanted in outputs_wanted]
    header: dict[str, Any] = {"model_name": served.handler.name, "model_version": MODEL_VERSION}
    if request.id is not None:
        header["id"] = request.id
    header["outputs"] = [output.header() for output in outputs]
    return header, outputs


def requested_outputs(request: InferenceRequest, classes: int) -> list[tuple[str, bool, int | None]]:
    """(name, as binary data, classification count) per output; all outputs when the request names none."""
    default_binary = (request.parameters or {}).get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise BadInput("parameter binary_data_output must be true or false")
    wanted = request.outputs or [RequestOutput(name=PROBABILITIES), RequestOutput(name=LABEL)]
    names = [output.name for output in wanted]
    if len(set(names)) != len(names):
        raise BadInput(f"an output is requested twice: {', '.join(names)}")
    return [_requested(output, default_binary, classes) for output in wanted]


def _requested(output: RequestOutput, default_binary: bool, classes: int) -> tuple[str, bool, int | None]:
    if output.name not in (PROBABILITIES, LABEL):
        raise BadInput(f"unknown output '{output.name}'; the outputs are '{PROBABILITIES}' and '{LABEL}'")
    parameters = output.parameters or {}
    binary = parameters.get("binary_data", default_binary)
    if not isinstance(binary, bool):
        raise BadInput(f"output '{output.name}': binary_data must be true or false")
    count = parameters.get("classification")
    if count is not None:
        if output.name != PROBABILITIES:
            raise BadInput(f"classification applies to output '{PROBABILITIES}', not '{output.name}'")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= classes:
            raise BadInput(f"output '{output.name}': classification must be a class count from 1 to {classes}")
    return output.name, binary, count


def make_output(handler: ModelHandler, probabilities: np.ndarray, name: str, binary: bool,
                classification: int | None) -> Output:
    count = len(probabilities)
    if name == LABEL:
        labels = [handler.classes[index].encode() for index in probabilities.argmax(axis=1).tolist()]
        return Output(name, BYTES, [count], labels, binary)
    if classification is None:
        return Output(name, "FP32", list(probabilities.shape), probabilities.astype(np.float32), binary)
    # The classification extension: "<value>:<index>:<label>" for the top classes, best first.
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :classification]
    values = [f"{probabilities[row, index]:.6g}:{index}:{handler.classes[index]}".encode()
              for row in range(count) for index in top[row].tolist()]
    return Output(name, BYTES, [count, classification], values, binary)
