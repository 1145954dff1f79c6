"""What every predict route shares: reading the body, decoding off the event loop, batching, answering."""
import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from app.core.config import Settings
from app.core.errors import APIError, UnsupportedMediaType
from app.api.input_errors import as_api_error
from app.api.schemas import OneOrMany
from preprocessing.errors import InputError
from app.serving.registry import ServedModel

PayloadT = TypeVar("PayloadT", bound=BaseModel)


@dataclass
class Inputs:
    """The raw inputs of one request and the body field they came from, for error messages."""

    items: list[Any]
    field: str
    is_batch: bool

    def named(self, index: int, error: APIError | InputError) -> APIError:
        """In a batch, the error names the input at fault: "images[3]: ..."."""
        return as_api_error(error, f"{self.field}[{index}]" if self.is_batch else None)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def unsupported(content_type: str, accepted: str) -> UnsupportedMediaType:
    shown = f"'{content_type}'" if content_type else "(none)"
    return UnsupportedMediaType(f"unsupported content type {shown}; send {accepted}")


def validation_context(settings: Settings) -> dict:
    return {"max_batch_items": settings.max_batch_items, "max_text_chars": settings.max_text_chars}


def parse_body(model: type[PayloadT], data: bytes | dict, settings: Settings) -> PayloadT:
    """Validate a JSON body (bytes) or an already-built dict; errors become 422 with body locations."""
    try:
        if isinstance(data, bytes):
            return model.model_validate_json(data, context=validation_context(settings))
        return model.model_validate(data, context=validation_context(settings))
    except ValidationError as exc:
        raise RequestValidationError([{**error, "loc": ("body", *error["loc"])}
                                      for error in exc.errors(include_url=False)]) from None


def payload_inputs(payload: OneOrMany) -> Inputs:
    field = payload.batch_field if payload.is_batch else payload.single_field
    return Inputs(payload.inputs, field, payload.is_batch)


async def predict_all(served: ServedModel, inputs: Inputs, decode: Callable[[Any], Any], top_k: int,
                      limiter: anyio.CapacityLimiter) -> JSONResponse:
    """Decode every input (big images in worker threads), batch them through the model, encode the answers.
    The response is built here, once: returned as a Response, it skips FastAPI's validation and re-encoding
    against the declared response_model (which still documents it in the OpenAPI schema)."""
    with served.timed():
        if not inputs.is_batch:  # one input: awaited directly, no task per step (most requests)
            probabilities = await served.predict(await _decode_one(served, decode, limiter, inputs.items[0]))
            return JSONResponse({"model": served.handler.name,
                                 **served.handler.encode_response(probabilities, top_k)})
        probabilities = await predict_each(served, await decode_all(served, inputs, decode, limiter))
        results = [served.handler.encode_response(probs, top_k) for probs in probabilities]
        return JSONResponse({"model": served.handler.name, "results": results})


async def decode_all(served: ServedModel, inputs: Inputs, decode: Callable[[Any], Any],
                     limiter: anyio.CapacityLimiter) -> list:
    """Every input decoded (big images in worker threads); the first that fails names itself in the error."""
    if len(inputs.items) == 1:
        try:
            return [await _decode_one(served, decode, limiter, inputs.items[0])]
        except (APIError, InputError) as exc:
            raise inputs.named(0, exc) from None
    return await _gather_named(inputs, [_decode_one(served, decode, limiter, raw) for raw in inputs.items])


async def predict_each(served: ServedModel, items: list) -> list:
    """Each item is submitted separately so it can share a forward pass with other requests' items."""
    if len(items) == 1:
        return [await served.predict(items[0])]
    return await asyncio.gather(*(served.predict(item) for item in items))


async def _decode_one(served: ServedModel, decode: Callable[[Any], Any], limiter: anyio.CapacityLimiter,
                      raw: Any) -> Any:
    if served.handler.decodes_inline(raw):
        return decode(raw)
    return await anyio.to_thread.run_sync(decode, raw, limiter=limiter)


async def _gather_named(inputs: Inputs, awaitables: list) -> list:
    """Await all; the first failing input (by index) fails the request, its error naming the input."""
    outcomes = await asyncio.gather(*awaitables, return_exceptions=True)
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, (APIError, InputError)):
            raise inputs.named(index, outcome)
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes
