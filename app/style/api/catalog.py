"""What a client reads before submitting: the preset paintings, a time estimate, every option's default and bounds."""
from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import Query, Request

from app.api.routes import versioned_router
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

from app.api.deps import SettingsDep
from app.core.errors import NotFound, ServiceUnavailable
from app.style import presets
from app.style.api.deps import RESOURCE, ServiceDep, base_url, eta_board_now
from app.style.api.form import FORM_OPTIONS, check_cost, invalid_field, option_limits, option_type, preset_names
from app.style.api.schemas import PresetList, StyleEstimate, StyleOptions, style_errors
from app.style.options import MAX_STYLES, StyleParams

router = versioned_router(RESOURCE, tags=["style"])


# --------------------------------------------------------------------------------------------- presets

@router.get("/presets", response_model=PresetList, summary="The preset style paintings")
async def list_presets(request: Request) -> dict:
    base = base_url(request)
    return {"presets": [{**p, "image_url": f"{base}/presets/{p['name']}"}
                        for p in presets.list_presets()]}


@router.get("/presets/{name}", summary="A preset painting's image", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}, **style_errors(404)})
async def preset_image(name: str) -> Response:
    try:
        path = presets.preset_path(name)
    except KeyError:
        raise NotFound(f"unknown style preset {name!r}; available presets: {', '.join(preset_names())}") from None
    data = await anyio.to_thread.run_sync(path.read_bytes)
    kind = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
    return Response(data, media_type=kind, headers={"Cache-Control": "public, max-age=86400"})


# --------------------------------------------------------------------------------------------- estimate / options

@router.get("/estimate", response_model=StyleEstimate, summary="How long a job would take if submitted now",
            description="Priced like `eta_s`: the queue ahead (running jobs' remaining work and the queued jobs, on "
                        "as many workers as there are) plus this job's own run, from the step times measured on the "
                        "device (per megapixel-step plus fixed costs, updated by every job). `width` and `height` "
                        "of the photo (any unit, only the aspect ratio counts) price a non-square output; without "
                        "them the output is priced square, the most pixels `size` can have.",
            responses=style_errors(422, 503))
async def estimate(service: ServiceDep, settings: SettingsDep,
                   size: Annotated[int | None, Query(description="longest side of the output in px; default: the "
                                                     "API's default size")] = None,
                   steps: Annotated[int | None, Query(description="steps; default: the API's default")] = None,
                   style_count: Annotated[int, Query(ge=1, le=MAX_STYLES, description="style images")] = 1,
                   width: Annotated[int | None, Query(ge=1, le=1_000_000, description="photo width")] = None,
                   height: Annotated[int | None, Query(ge=1, le=1_000_000, description="photo height")] = None
                   ) -> dict:
    options = {k: v for k, v in (("size", size), ("steps", steps)) if v is not None}
    try:
        params = StyleParams.model_validate(options)  # the submit form's own bounds and defaults
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False)]) \
            from None
    if (width is None) != (height is None):
        raise invalid_field("width" if width is None else "height", "give both width and height, or neither",
                            "missing", "query")
    size = params.size or service.default_size
    # a job the submit would refuse is refused here too, with the same sentence (square when no photo is given)
    check_cost((width, height) if width and height else (size, size), {"size": size, "steps": params.steps},
               settings.max_job_pixel_steps, "query")
    board = await eta_board_now(service, fresh=True)
    if board is None:
        raise ServiceUnavailable("the time estimate cannot be computed right now; retry shortly",
                                 headers={"Retry-After": "2"})
    content_size = (width, height) if width and height else None
    return board.estimate(size, params.steps, content_size, style_count)


@router.get("/options", response_model=StyleOptions, responses=style_errors(503),
            summary="Every job option's default and bounds (what a form should offer)",
            description="Read from the engine's option model and this server's settings, so a client never "
                        "writes them twice: `defaults[name]` and `limits[name].min/.max` (or `.choices`) for each "
                        "form field of POST /v1/style/jobs; the default size is this device's (or "
                        "STYLE_DEFAULT_SIZE).")
async def options(settings: SettingsDep, service: ServiceDep) -> dict:
    defaults, limits, types, descriptions = {}, {}, {}, {}
    for name in FORM_OPTIONS:
        field = StyleParams.model_fields[name]
        kind, choices = option_type(field.annotation)
        defaults[name] = field.get_default(call_default_factory=True)
        limits[name] = {**option_limits(field), **({"choices": choices} if choices else {})}
        if kind in ("integer", "number"):
            limits[name].setdefault("min", None)
            limits[name].setdefault("max", None)
        types[name] = kind
        descriptions[name] = field.description or ""
    defaults["size"] = service.default_size
    return {"defaults": defaults, "limits": limits, "types": types, "descriptions": descriptions,
            "presets": preset_names(), "max_styles": MAX_STYLES, "max_upload_bytes": settings.max_upload_bytes,
            "max_upload_mb": round(settings.max_upload_bytes / 2**20, 2),
            "max_image_pixels": settings.max_image_pixels, "max_job_pixel_steps": settings.max_job_pixel_steps}
