"""Sentence sentiment route."""
import codecs
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from app.api.deps import DecodeLimiterDep, SettingsDep, TopKQuery, checked_top_k, served_model_for
from app.api.inference import Inputs, media_type, parse_body, payload_inputs, predict_all, unsupported
from app.api.schemas import BatchPredictionResponse, PredictionResponse, TextPayload, error_responses
from app.api.routes import versioned_router
from app.core.config import Settings
from app.api.timed_route import TimedRoute
from app.core.errors import BadInput, PayloadTooLarge, UnsupportedMediaType
from app.serving.registry import ServedModel

TASK = "sentiment"
ACCEPTED = "application/json ({\"text\": ...} or {\"texts\": [...]}) or text/plain"
# Text charsets a text/plain body may name. Python's codec registry also holds codecs that are not charsets
# (punycode, idna, rot13, base64...): they fail in ways that are not decode errors, so only these are looked up.
CHARSETS = {codecs.lookup(name).name: name for name in (
    "utf-8", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be", "ascii", "iso-8859-1",
    "iso-8859-15", "windows-1252")}

TEXT_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": TextPayload.model_json_schema()},
        "text/plain": {"schema": {"type": "string", "description": "one text, UTF-8"}},
    },
}

router = versioned_router(TASK, tags=[TASK], route_class=TimedRoute)


@router.post(
    "/predict", response_model=PredictionResponse | BatchPredictionResponse,
    summary="Classify the sentiment of English text",
    description="Send JSON `{\"text\": ...}` or `{\"texts\": [...]}`, or one text as text/plain; "
                "labels are `negative` and `positive`.",
    openapi_extra={"requestBody": TEXT_REQUEST_BODY},
    responses=error_responses(400, 404, 413, 415, 422, 503, 504),
)
async def predict(request: Request, settings: SettingsDep, limiter: DecodeLimiterDep,
                  served: Annotated[ServedModel, Depends(served_model_for(TASK))],
                  top_k: TopKQuery = None) -> JSONResponse:
    top_k = checked_top_k(served, top_k)
    inputs = await read_text_inputs(request, settings)
    check_total_chars(inputs.items, settings.max_request_chars)
    return await predict_all(served, inputs, served.handler.decode_request, top_k, limiter)


async def read_text_inputs(request: Request, settings: Settings) -> Inputs:
    content_type = media_type(request)
    if content_type == "application/json":
        return payload_inputs(parse_body(TextPayload, await request.body(), settings))
    if content_type == "text/plain":
        text = _decode_text(await request.body(), _charset(request))
        return payload_inputs(parse_body(TextPayload, {"text": text}, settings))
    raise unsupported(content_type, ACCEPTED)


def _charset(request: Request) -> str:
    for param in request.headers.get("content-type", "").split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            return value.strip().strip('"') or "utf-8"
    return "utf-8"


def check_total_chars(texts: list[str], limit: int) -> None:
    """One request's texts together: a batch of long texts costs seconds of the model, shared by everyone."""
    total = sum(len(text) for text in texts)
    if total > limit:
        raise PayloadTooLarge(f"the texts of this request have {total:,} characters in all; one request may carry "
                              f"at most {limit:,} (MAX_REQUEST_CHARS): send the batch in smaller parts")


def _decode_text(body: bytes, charset: str) -> str:
    try:
        codec = codecs.lookup(charset).name
    except LookupError:
        codec = None
    if codec not in CHARSETS:
        raise UnsupportedMediaType(f"unsupported charset '{charset}'; send text/plain in one of "
                                   f"{', '.join(CHARSETS.values())} (UTF-8 when no charset is given)")
    try:
        return body.decode(codec)
    except UnicodeDecodeError as exc:
        raise BadInput(f"the body is not valid {CHARSETS[codec]} text ({exc.reason} at byte {exc.start})") from None
