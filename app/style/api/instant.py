"""POST /v1/style/instant: a stylised PNG in about a second (WCT + decoder, app/style/instant.py), answered directly.

Same form as POST /v1/style/jobs (read and checked by app/style/api/form.py, so the same 4xx answers), plus `alpha`
(0..1, how much of the painting's statistics) and `preserve_color`. The work runs in a worker thread, at most
INSTANT_STYLE_CONCURRENCY at once with at most INSTANT_STYLE_QUEUE more waiting; beyond, 429 with Retry-After.
The styler is loaded on the first request (the VGG encoder and the decoder, verified against the manifest);
INSTANT_STYLE_PRECISION (auto, float32, bfloat16) chooses its arithmetic (auto: bfloat16 on a CPU that has it).
"""
from __future__ import annotations

import io
import logging
import math
import time
from typing import Any

import anyio
from fastapi import Request

from app.api.routes import versioned_router
from fastapi.responses import Response
from PIL import Image

from app.api.deps import DecodeLimiterDep, SettingsDep
from app.core.config import Settings
from app.api.input_errors import as_api_error
from app.core.errors import APIError
from preprocessing.errors import InputError
from preprocessing.decoding import open_image
from app.serving.loading import resolve_device
from app.style.api.deps import RESOURCE, StyleStateDep
from app.style.api.form import (FILE_FIELDS, LIST_FIELDS, OPTION_FIELDS, invalid_field, parse_options, read_files,
                                style_form)
from app.style.api.schemas import JOB_REQUEST_BODY, style_errors
from app.style.state import InstantState, StyleState
from app.style.options import DEFAULT_SIZE_CPU, DEFAULT_SIZE_CUDA, too_thin

logger = logging.getLogger("app.style")
router = versioned_router(RESOURCE, tags=["style"])

INSTANT_FIELDS = ("alpha",)
KNOWN_FIELDS = (*FILE_FIELDS, "style_preset", *OPTION_FIELDS, *LIST_FIELDS, *INSTANT_FIELDS)
# validated like a job's (so one form serves both) but without effect on a feed-forward result
IGNORED_FIELDS = ("steps", "style_weight", "content_weight", "tv_weight", "init", "seed", "content_layers",
                  "style_layers")
ACCEPTED = "multipart/form-data with a 'content' image file and 'style' files and/or 'style_preset' names"


def _default_size(style: StyleState, settings: Settings) -> int:
    if style.service is not None:
        return style.service.default_size
    if settings.style_default_size:
        return settings.style_default_size
    return DEFAULT_SIZE_CUDA if str(resolve_device(settings.device)).startswith("cuda") else DEFAULT_SIZE_CPU


def parse_alpha(items: list[tuple[str, Any]]) -> float:
    values = [v for k, v in items if k == "alpha"]
    if not values:
        return 1.0
    if len(values) > 1:
        raise invalid_field("alpha", "given more than once")
    if not isinstance(values[0], str):
        raise invalid_field("alpha", "must be a text field, not a file")
    text = values[0].strip()
    if text == "":
        return 1.0
    try:
        alpha = float(text)
    except ValueError:
        raise invalid_field("alpha", f"must be a number between 0 and 1, got {text[:40]!r}", "float_parsing") \
            from None
    if not math.isfinite(alpha) or not 0 <= alpha <= 1:
        raise invalid_field("alpha", f"must be between 0 (the photo) and 1 (the painting's statistics), got {text}",
                            "less_than_equal" if alpha > 1 else "greater_than_equal")
    return alpha


@router.post("/instant", summary="Stylise a photo at once (PNG)", response_class=Response,
             description="The same form as POST /v1/style/jobs (`content`, `style` files and/or `style_preset` "
                         "names, `style_weights`, `size`, `style_scale`, `preserve_color`), plus `alpha` (0..1, "
                         "default 1: the painting's statistics; 0: the photo as the decoder rebuilds it). Answers "
                         "the stylised PNG directly: whitening and colouring of VGG-19 relu3_1 features and a "
                         "trained decoder (about a second at 512 px on a CPU; a preset's statistics are cached). "
                         "The job's optimisation-only options (steps, weights, init, seed, layers) are checked as a "
                         "job's are and have no effect (listed in `X-Style-Ignored`). At most "
                         "INSTANT_STYLE_CONCURRENCY run at once and INSTANT_STYLE_QUEUE wait; beyond, 429 with "
                         "Retry-After.",
             openapi_extra={"requestBody": {**JOB_REQUEST_BODY, "content": {"multipart/form-data": {"schema": {
                 **JOB_REQUEST_BODY["content"]["multipart/form-data"]["schema"],
                 "properties": {**JOB_REQUEST_BODY["content"]["multipart/form-data"]["schema"]["properties"],
                                "alpha": {"type": "string", "description": "0..1 (default 1): blend of the "
                                          "stylised and the photo's own features"}}}}}}},
             responses={200: {"content": {"image/png": {}}, "description": "the stylised image: longest side = "
                              "size, aspect kept; X-Style-Seconds: the server's time for it"},
                        **style_errors(400, 413, 415, 422, 503),
                        429: style_errors(429)[429] | {"description": "INSTANT_STYLE_CONCURRENCY requests are "
                                                       "running and INSTANT_STYLE_QUEUE waiting (Retry-After)"}})
async def instant(request: Request, app_style: StyleStateDep, settings: SettingsDep,
                  limiter: DecodeLimiterDep) -> Response:
    async with style_form(request, KNOWN_FIELDS, ACCEPTED) as items:
        content, styles = await read_files(items)
    alpha = parse_alpha(items)
    params, options = parse_options([(k, v) for k, v in items if k not in INSTANT_FIELDS], styles,
                                    _default_size(app_style, settings))
    size = params["size"]

    async def decode(field: str, data: bytes, at_least: int) -> Image.Image:
        try:
            return await anyio.to_thread.run_sync(_decode, data, settings.max_image_pixels, at_least,
                                                  limiter=limiter)
        except (APIError, InputError) as exc:
            raise as_api_error(exc, field) from None

    content_image = await decode("content", content[1], size)
    _check_shape("content", content_image.size, size)
    uploads: dict[int, Image.Image] = {}
    for index, style in enumerate(styles):
        if "data" in style:
            field = f"style[{index}]" if len(styles) > 1 else "style"
            uploads[index] = await decode(field, style["data"], math.ceil(size * params["style_scale"]))
            _check_shape(field, uploads[index].size, size, params["style_scale"])

    state = app_style.instant
    if state.admitted >= state.concurrency + state.queue:
        raise APIError(f"instant style is busy ({state.concurrency} running, {state.queue} waiting; "
                       "INSTANT_STYLE_CONCURRENCY, INSTANT_STYLE_QUEUE); retry shortly", 429,
                       {"Retry-After": str(state.retry_after_s())})
    state.admitted += 1
    try:
        png, seconds = await anyio.to_thread.run_sync(
            _run, state, content_image, styles, uploads, params, alpha, limiter=state.limiter)
    finally:
        state.admitted -= 1
    state.record(seconds)
    ignored = [name for name in IGNORED_FIELDS if name in options]
    headers = {"Cache-Control": "no-store", "X-Style-Seconds": f"{seconds:.3f}"}
    if ignored:
        headers["X-Style-Ignored"] = ",".join(ignored)
    return Response(png, media_type="image/png", headers=headers)


def _decode(data: bytes, max_pixels: int, at_least: int) -> Image.Image:
    return open_image(data, max_pixels, at_least=at_least)


def _check_shape(field: str, image_size: tuple[int, int], size: int, style_scale: float | None = None) -> None:
    # one scale (steps=1): the feed-forward pass has no coarse stage
    problem = too_thin("style" if style_scale is not None else "content", image_size, size, 1, style_scale)
    if problem:
        raise invalid_field(field, problem)


def _run(state: InstantState, content: Image.Image, styles: list[dict], uploads: dict[int, Image.Image],
         params: dict, alpha: float) -> tuple[bytes, float]:
    start = time.perf_counter()
    styler = state.styler()
    size, scale = params["size"], params["style_scale"]
    stats = [styler.preset_stats(s["preset"], size, scale) if "preset" in s
             else styler.upload_stats(uploads[i], size, scale) for i, s in enumerate(styles)]
    image = styler.stylise(content, stats, params["style_weights"], size, alpha, params["preserve_color"])
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)  # level 6 costs about 0.1 s more at 512 px for a file 10 % smaller
    return buffer.getvalue(), time.perf_counter() - start

