"""Neural style transfer as background jobs: submit, watch (poll or server-sent events), fetch, cancel, delete.

The optimisation runs in worker processes (app.style.worker), never on the event loop; this module only
validates requests, reads and writes the job store, and streams files.
"""
from __future__ import annotations

import errno
import logging
import math
import secrets
import sqlite3
import types
import typing
from contextlib import suppress
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile

from app.api.deps import DecodeLimiterDep, SettingsDep
from app.api.inference import media_type, unsupported
from app.api.schemas import ErrorBody, ValidationErrorBody
from app.core.errors import APIError, NotFound, ServiceUnavailable
from app.core.security import Caller, caller_of
from app.preprocessing.decoding import open_image
from app.style import jobs as J
from app.style.engine import MAX_STYLES, StyleParams, fit_size, too_thin
from app.style.service import AnyStyleService

logger = logging.getLogger("app.style")
PREFIX = "/v1/style"
MAX_OFFSET = 1_000_000_000  # list offsets beyond SQLite's 64-bit integers used to be a 500
SSE_KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing an idle stream
OPTION_FIELDS = ("size", "steps", "style_weight", "content_weight", "tv_weight", "init", "seed", "preserve_color",
                 "style_scale")
LIST_FIELDS = ("style_weights", "content_layers", "style_layers")  # repeated or comma-separated
FILE_FIELDS = ("content", "style")
KNOWN_FIELDS = (*FILE_FIELDS, "style_preset", *OPTION_FIELDS, *LIST_FIELDS)
ACCEPTED = "multipart/form-data with a 'content' image file and 'style' files and/or 'style_preset' names"

router = APIRouter(prefix=PREFIX, tags=["style"])


# --------------------------------------------------------------------------------------------- schemas

class Progress(BaseModel):
    step: int = Field(description="loss evaluations done")
    total: int = Field(description="loss evaluations in all (= steps)")
    fraction: float = Field(description="step / total, 0..1")


class StyleJob(BaseModel):
    id: str = Field(description="unguessable job id")
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    queue_position: int | None = Field(description="1-based place in the queue while queued, else null")
    progress: Progress
    created_at: str = Field(description="ISO 8601 UTC")
    started_at: str | None
    finished_at: str | None
    params: dict[str, Any] = Field(description="the resolved options (defaults filled in), and `styles`: the "
                                   "style images in blend order ({\"preset\": name} or {\"upload\": filename})")
    losses: dict[str, float] | None = Field(description="latest losses (content, style, tv, total)")
    error: str | None = Field(description="why the job failed (status failed only)")
    notice: str | None = Field(None, description="e.g. that the job was re-queued after the server stopped")
    attempts: int = Field(description="times a worker started this job")
    result_url: str | None = Field(description="the PNG, once succeeded")
    preview_url: str | None = Field(description="the latest intermediate PNG, once there is one")
    events_url: str
    owner: str | None = Field(None, description="the name of the API key that submitted it (null without API_KEYS)")
    eta_s: float | None = Field(None, description="seconds until this job finishes, while queued or running: the "
                                "remaining work of the jobs ahead of it plus its own, priced with the step times "
                                "measured on the device that runs it; null once finished (or when no worker runs "
                                "jobs)")


class StyleEstimate(BaseModel):
    eta_s: float = Field(description="seconds until a job with these options, submitted now, would finish")
    queued_ahead: int = Field(description="jobs queued before it")
    seconds_per_step: float = Field(description="mean seconds per step (loss evaluation) of its run")
    wait_s: float = Field(description="seconds before a worker is free for it")
    run_s: float = Field(description="seconds of its own run (steps and fixed costs)")
    workers: int = Field(description="workers taking jobs (0: none; the estimate then assumes one)")
    device: str = Field(description="the device kind whose measured step times price the run")
    measured: bool = Field(description="false until that device measured anything (built-in figures then)")


class StyleOptions(BaseModel):
    defaults: dict[str, Any] = Field(description="the value a job gets for each form field it leaves out (null: "
                                     "chosen per job, e.g. a random seed, equal blend weights, the engine's layers)")
    limits: dict[str, dict[str, Any]] = Field(description="bounds of each form field: numbers have `min` and `max` "
                                              "(null: unbounded; `exclusive_min`/`exclusive_max` true when the "
                                              "bound itself is refused), lists `min_items`/`max_items`, fields "
                                              "with a fixed set of values `choices`")
    types: dict[str, str] = Field(description="integer, number, boolean, string or array (of numbers or names)")
    descriptions: dict[str, str]
    presets: list[str] = Field(description="the names style_preset accepts")
    max_styles: int = Field(description="most style images (uploads and presets) in one job")
    max_upload_bytes: int = Field(description="largest request body (MAX_UPLOAD_BYTES)")
    max_upload_mb: float = Field(description="the same in MiB (the page's 'MB')")
    max_image_pixels: int = Field(description="largest image, width x height (MAX_IMAGE_PIXELS)")
    max_job_pixel_steps: int = Field(description="most output pixels x steps in one job (MAX_JOB_PIXEL_STEPS)")


class StyleJobList(BaseModel):
    jobs: list[StyleJob] = Field(description="newest first")
    total: int
    limit: int
    offset: int
    next: str | None = Field(description="the next page, null on the last")


class Preset(BaseModel):
    name: str
    title: str
    artist: str
    year: Any
    licence: str
    image_url: str


class PresetList(BaseModel):
    presets: list[Preset]


def _errors(*codes: int, **descriptions: str) -> dict[int, dict]:
    texts = {400: "an image that cannot be decoded", 404: "unknown job or preset",
             409: "the job is not in a state that has this (the detail names its status)",
             410: "the job failed or was cancelled: it will never have a result",
             413: "body over MAX_UPLOAD_BYTES or image over MAX_IMAGE_PIXELS",
             415: "not multipart/form-data, or a file that is not a supported image",
             422: "invalid options, unknown preset, no style, a job costing more than MAX_JOB_PIXEL_STEPS, an image "
                  "too elongated for the size",
             429: "MAX_QUEUED_JOBS jobs are queued, or MAX_QUEUED_JOBS_PER_OWNER of this API key's (Retry-After)",
             503: "the server is starting, or the job store (Redis) is unreachable (Retry-After)",
             507: "no space left in the job store (DATA_DIR volume, or Redis memory) for the job (Retry-After)"}
    return {code: {"model": ValidationErrorBody if code == 422 else ErrorBody, "description": texts[code]}
            for code in codes}


JOB_REQUEST_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["content"],
        "properties": {
            "content": {"type": "string", "format": "binary", "description": "the photo to stylise"},
            "style": {"type": "array", "items": {"type": "string", "format": "binary"},
                      "description": "style image(s); repeat the field for a blend"},
            "style_preset": {"type": "array", "items": {"type": "string"},
                             "description": "preset name(s) from GET /v1/style/presets; repeatable"},
            "style_weights": {"type": "string", "description": "blend weights, one per style in the order sent "
                              "(uploads and presets as they appear in the form): '0.7,0.3' or repeated"},
            **{name: {"type": "string", "description": (StyleParams.model_fields[name].description or "")}
               for name in OPTION_FIELDS},
        },
    }}},
}


# --------------------------------------------------------------------------------------------- helpers

def get_service(request: Request) -> AnyStyleService:
    service = getattr(request.app.state, "style_service", None)
    if service is None:
        raise ServiceUnavailable("the server is starting; retry shortly", headers={"Retry-After": "2"})
    return service


ServiceDep = Annotated[AnyStyleService, Depends(get_service)]


def _base(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/") + PREFIX


def job_view(job: J.Job, base: str, board: J.EtaBoard | None = None) -> dict:
    url = f"{base}/jobs/{job.id}"
    failed = job.status == J.FAILED
    return {
        "id": job.id, "status": job.status, "queue_position": job.queue_position,
        "progress": {"step": job.step, "total": job.total, "fraction": job.fraction},
        "created_at": J.iso(job.created_at), "started_at": J.iso(job.started_at),
        "finished_at": J.iso(job.finished_at), "params": job.params, "losses": finite_losses(job.losses),
        "error": job.error if failed else None, "notice": None if failed else job.error,
        "attempts": job.attempts,
        "result_url": f"{url}/result" if job.status == J.SUCCEEDED else None,
        "preview_url": f"{url}/preview" if job.has_preview or job.status == J.SUCCEEDED else None,
        "events_url": f"{url}/events", "owner": job.owner,
        "eta_s": board.for_job(job) if board is not None else None,
    }


def finite_losses(losses: dict | None) -> dict | None:
    """Losses as JSON can carry them: a value that is not finite is left out (JSON has no NaN or Infinity)."""
    if losses is None:
        return None
    return {name: value for name, value in losses.items() if isinstance(value, (int, float)) and math.isfinite(value)}


async def _board(service: AnyStyleService, fresh: bool = False) -> J.EtaBoard | None:
    """The time estimates now; None (every eta_s null) when they cannot be computed, so a job can always be read."""
    try:
        return await anyio.to_thread.run_sync(service.eta_board, fresh)
    except J.JobStoreUnavailable:
        raise
    except Exception:
        logger.exception("time estimates unavailable")
        return None


async def _store(service: AnyStyleService, method: str, *args):
    """Store calls run in a worker thread: SQLite may wait on a lock and Redis on the network; the loop must not."""
    return await anyio.to_thread.run_sync(getattr(service.store, method), *args)


async def _job_or_404(service: AnyStyleService, job_id: str, request: Request | None = None) -> J.Job:
    """The job, if the caller may see it: with API_KEYS a job belongs to the key that submitted it, and another
    owner's job is answered exactly like an unknown one (404), so ids cannot be probed."""
    job = await _store(service, "get", job_id)
    if job is None or (request is not None and not _may_see(caller_of(request.scope), job)):
        raise NotFound(f"no style job {job_id!r} (unknown, deleted, or expired after RESULT_TTL)")
    return job


def _may_see(caller: Caller | None, job: J.Job) -> bool:
    return caller is None or caller.admin or job.owner == caller.name


def _listed_owner(request: Request) -> str | None:
    """Whose jobs a listing shows: the caller's, or everyone's (no API_KEYS, or an admin key)."""
    caller = caller_of(request.scope)
    return None if caller is None or caller.admin else caller.name


def _presets_module():
    from app.style import presets  # the fixed table of paintings shipped in data/style/

    return presets


def _preset_names() -> list[str]:
    return [p["name"] for p in _presets_module().list_presets()]


def _invalid(field: str, message: str, kind: str = "value_error") -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": ("body", field), "msg": message}])


# --------------------------------------------------------------------------------------------- submit

@router.post("/jobs", status_code=202, response_model=StyleJob, summary="Submit a style-transfer job",
             description="multipart/form-data: `content` (image file), one or more `style` files and/or "
                         "`style_preset` names (a blend when several; `style_weights` one per style, in form "
                         "order), options as fields. Answers 202 with the job and its URL in `Location`.",
             openapi_extra={"requestBody": JOB_REQUEST_BODY},
             responses=_errors(400, 413, 415, 422, 429, 503, 507))
async def submit_job(request: Request, settings: SettingsDep, limiter: DecodeLimiterDep,
                     service: ServiceDep) -> JSONResponse:
    content_type = media_type(request)
    if content_type != "multipart/form-data":
        raise unsupported(content_type, ACCEPTED)
    async with request.form(max_files=MAX_STYLES + 1, max_fields=64) as form:
        items = list(form.multi_items())
        unknown = sorted({key for key, _ in items if key not in KNOWN_FIELDS})
        if unknown:
            raise _invalid(unknown[0], f"unknown field(s) {', '.join(unknown)}; accepted: {', '.join(KNOWN_FIELDS)}",
                           "extra_forbidden")
        content, styles = await _read_files(items)
    params, options = _parse_options(items, styles, service)
    caller = caller_of(request.scope)
    owner = caller.name if caller is not None else None
    per_owner = settings.max_queued_jobs_per_owner if owner is not None else 0
    queued = await _store(service, "count", J.QUEUED)
    if queued >= settings.max_queued_jobs:
        raise _queue_full(service, J.QueueFull(queued, settings.max_queued_jobs))
    if per_owner:
        mine = await _store(service, "count", J.QUEUED, owner)
        if mine >= per_owner:
            raise _queue_full(service, J.QueueFull(mine, per_owner, owner))

    async def check(field: str, data: bytes) -> tuple[str, tuple[int, int]]:
        try:
            img = await anyio.to_thread.run_sync(open_image, data, settings.max_image_pixels, limiter=limiter)
        except APIError as exc:
            raise APIError(f"{field}: {exc.detail}", exc.status_code, exc.headers) from None
        return (img.format or "img").lower(), img.size

    content_ext, content_size = await check("content", content[1])
    _check_cost(content_size, params, settings.max_job_pixel_steps)
    _check_shape("content", content_size, params)
    stored_styles = []
    for index, style in enumerate(styles):
        if "data" in style:
            field = f"style[{index}]" if len(styles) > 1 else "style"
            ext, style_size = await check(field, style["data"])
            _check_shape(field, style_size, params, style=True)
            stored_styles.append({"file": f"style_{index}.{ext}", "data": style["data"]})
        else:
            stored_styles.append(style)
    try:
        job = await anyio.to_thread.run_sync(
            lambda: service.store.submit(params, params["steps"], (f"content.{content_ext}", content[1]),
                                         stored_styles, settings.max_queued_jobs, content_size=content_size,
                                         owner=owner, max_queued_per_owner=per_owner))
    except J.QueueFull as exc:
        raise _queue_full(service, exc) from None
    except (OSError, sqlite3.OperationalError) as exc:
        if not _disk_full(exc):
            raise
        raise APIError("no space left on the server's data volume (DATA_DIR) to store this job; finished jobs "
                       "are deleted after RESULT_TTL, retry later", 507, {"Retry-After": "60"}) from None
    service.notify()
    board = None
    with suppress(J.JobStoreUnavailable):  # the job is stored: a blip now costs its estimate, not the 202
        board = await _board(service, fresh=True)
    body = job_view(job, _base(request), board)
    return JSONResponse(body, status_code=202, headers={"Location": f"{_base(request)}/jobs/{job.id}"})


def _disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return "disk is full" in str(exc)  # sqlite3: SQLITE_FULL


def _queue_full(service: AnyStyleService, full: J.QueueFull) -> APIError:
    if full.owner is not None:
        message = (f"you have {full.queued} style jobs waiting, the most one API key may queue "
                   f"(MAX_QUEUED_JOBS_PER_OWNER={full.limit}); submit more when one has started")
    else:
        message = f"the style queue is full ({full.queued} jobs waiting, MAX_QUEUED_JOBS={full.limit}); retry later"
    return APIError(message, 429, {"Retry-After": str(service.retry_after_s())})


def _check_cost(content_size: tuple[int, int], params: dict, limit: int) -> None:
    """Output pixels x steps: one job may not hold a worker for hours while everyone else waits."""
    width, height = fit_size(*content_size, params["size"])
    cost = width * height * params["steps"]
    if cost <= limit:
        return
    most_steps = limit // (width * height)
    scale = math.sqrt(limit / cost)
    most_size = max(1, int(params["size"] * scale))
    advice = f"use at most {most_steps} steps at size {params['size']}" if most_steps >= 1 else ""
    advice += (" or " if advice else "") + f"a size of at most {most_size} at {params['steps']} steps"
    raise _invalid("steps", f"this job is {width}x{height} px x {params['steps']} steps = {cost / 1e6:,.0f} "
                            f"megapixel-steps; one job may cost at most {limit / 1e6:,.0f} (MAX_JOB_PIXEL_STEPS): "
                            f"{advice}", "less_than_equal")


def _check_shape(field: str, image_size: tuple[int, int], params: dict, style: bool = False) -> None:
    problem = too_thin("style" if style else "content", image_size, params["size"], params["steps"],
                       params["style_scale"] if style else None)
    if problem:
        raise _invalid(field, problem)


async def _read_files(items: list[tuple[str, Any]]) -> tuple[tuple[str, bytes], list[dict]]:
    """The content upload, and the styles (uploads and presets) in the order they appear in the form."""
    content: tuple[str, bytes] | None = None
    styles: list[dict] = []
    presets = None
    for key, value in items:
        if key == "content":
            if not isinstance(value, UploadFile):
                raise _invalid("content", "must be a file (the photo to stylise), not a text field")
            if content is not None:
                raise _invalid("content", "send exactly one content image")
            content = (value.filename or "content", await value.read())
        elif key == "style":
            if not isinstance(value, UploadFile):
                raise _invalid("style", "must be an image file; to use a preset painting send its name as "
                                        "'style_preset'")
            styles.append({"data": await value.read(), "upload": value.filename or f"style_{len(styles)}"})
        elif key == "style_preset":
            if isinstance(value, UploadFile):
                raise _invalid("style_preset", "must be a preset name, not a file; upload images as 'style'")
            presets = presets if presets is not None else _preset_names()
            for name in (n.strip() for n in value.split(",")):
                if not name:
                    continue
                if name not in presets:
                    raise _invalid("style_preset", f"unknown style preset {name!r}; available presets: "
                                                   f"{', '.join(presets)}")
                styles.append({"preset": name})
    if content is None:
        raise _invalid("content", "missing: send the photo to stylise as a file field named 'content'", "missing")
    if not styles:
        raise _invalid("style", "no style given: send at least one 'style' image file or 'style_preset' name "
                                "(GET /v1/style/presets lists them)", "missing")
    if len(styles) > MAX_STYLES:
        raise _invalid("style", f"{len(styles)} styles given; at most {MAX_STYLES} can be blended", "too_long")
    return content, styles


def _parse_options(items: list[tuple[str, Any]], styles: list[dict], service: AnyStyleService) -> tuple[dict, dict]:
    """Form fields -> validated StyleParams -> the resolved params stored with the job."""
    options: dict[str, Any] = {}
    for key, value in items:
        if key in FILE_FIELDS or key == "style_preset":
            continue
        if isinstance(value, UploadFile):
            raise _invalid(key, "must be a text field, not a file")
        value = value.strip()
        if key in LIST_FIELDS:
            options.setdefault(key, []).extend(v.strip() for v in value.split(",") if v.strip())
        elif key in options:
            raise _invalid(key, "given more than once")
        elif value != "":
            options[key] = value
    try:
        params = StyleParams.model_validate(options)
        blend = params.blend(len(styles))
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]) \
            from None
    except ValueError as exc:
        raise _invalid("style_weights", str(exc)) from None
    resolved = params.model_dump()
    resolved["size"] = params.size or service.default_size
    resolved["style_weights"] = [round(w, 6) for w in blend]
    if resolved["seed"] is None:
        resolved["seed"] = secrets.randbelow(2**31)  # recorded, so a job can be reproduced
    for key in ("content_layers", "style_layers"):
        if resolved[key] is None:
            del resolved[key]
    resolved["styles"] = [{"preset": s["preset"]} if "preset" in s else {"upload": s["upload"]} for s in styles]
    return resolved, options


# --------------------------------------------------------------------------------------------- read

@router.get("/jobs", response_model=StyleJobList, summary="Recent style jobs, newest first",
            responses=_errors(422, 503))
async def list_jobs(request: Request, service: ServiceDep,
                    limit: Annotated[int, Query(ge=1, le=100, description="jobs per page")] = 20,
                    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="jobs to skip")] = 0) -> dict:
    jobs, total = await _store(service, "list", limit, offset, _listed_owner(request))
    base = _base(request)
    following = offset + len(jobs)
    board = await _board(service) if any(not job.finished for job in jobs) else None
    return {"jobs": [job_view(job, base, board) for job in jobs], "total": total, "limit": limit, "offset": offset,
            "next": f"{base}/jobs?limit={limit}&offset={following}" if following < total else None}


@router.get("/jobs/{job_id}", response_model=StyleJob, summary="One style job", responses=_errors(404, 503))
async def get_job(job_id: str, request: Request, service: ServiceDep) -> dict:
    job = await _job_or_404(service, job_id, request)
    return job_view(job, _base(request), None if job.finished else await _board(service))


async def _read_file(service: AnyStyleService, job_id: str, name: str) -> bytes | None:
    return await _store(service, "read_file", job_id, name)


def _png(data: bytes, cache: str) -> Response:
    return Response(data, media_type="image/png", headers={"Cache-Control": cache})


def _not_ready(job: J.Job, what: str) -> APIError:
    if job.status == J.QUEUED:
        return APIError(f"job {job.id} is queued (position {job.queue_position}); its {what} is not ready yet", 409)
    if job.status == J.RUNNING:
        return APIError(f"job {job.id} is running (step {job.step} of {job.total}); its {what} is not ready yet",
                        409)
    why = f"failed: {job.error}" if job.status == J.FAILED else "was cancelled"
    return APIError(f"job {job.id} {why}; it has no {what} and never will (410 Gone)", 410)


@router.get("/jobs/{job_id}/result", summary="The stylised image (PNG)", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "longest side = size, aspect kept"},
                       **_errors(404, 409, 410, 503)})
async def get_result(job_id: str, request: Request, service: ServiceDep) -> Response:
    job = await _job_or_404(service, job_id, request)
    if job.status != J.SUCCEEDED:
        raise _not_ready(job, "result")
    data = await _read_file(service, job_id, J.RESULT_FILE)
    if data is None:
        raise NotFound(f"the result of job {job_id} is gone (deleted or expired)")
    return _png(data, "private, max-age=86400, immutable")


@router.get("/jobs/{job_id}/preview", summary="The latest intermediate image (PNG)", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "the final result once succeeded"},
                       **_errors(404, 409, 503)})
async def get_preview(job_id: str, request: Request, service: ServiceDep) -> Response:
    job = await _job_or_404(service, job_id, request)
    name = J.RESULT_FILE if job.status == J.SUCCEEDED else J.PREVIEW_FILE
    data = await _read_file(service, job_id, name) if job.has_preview or job.status == J.SUCCEEDED else None
    if data is None:
        if job.status in (J.QUEUED, J.RUNNING):
            raise APIError(f"job {job.id} is {job.status}; no preview yet (the first comes after the first step)",
                           409)
        raise APIError(f"job {job.id} is {job.status} and has no preview", 409)
    return _png(data, "no-store")


# --------------------------------------------------------------------------------------------- events

@router.get("/jobs/{job_id}/events", summary="Server-sent events: progress and status changes",
            response_class=StreamingResponse,
            description="`event: status` (data: the job JSON) at the start and at every status change, "
                        "`event: progress` (data: {id, step, total, fraction, losses, preview_url, eta_s}) as steps "
                        "complete, a `: keep-alive` comment every 15 s; the stream ends after the final status "
                        "(`{id, status: \"deleted\"}` when the job is deleted). When the server stops, every open "
                        "stream gets `event: shutdown` (data: {id, status, detail}, with a `retry:` hint) and ends: "
                        "reconnect to follow the job. One watcher per job serves all its streams; at most "
                        "STREAMS_PER_JOB streams per job and MAX_EVENT_STREAMS in all (429 with Retry-After beyond).",
            responses={200: {"content": {"text/event-stream": {}}}, **_errors(404, 503),
                       429: {"model": ErrorBody, "description": "STREAMS_PER_JOB streams are open on this job, or "
                             "MAX_EVENT_STREAMS in all (Retry-After)"}})
async def job_events(job_id: str, request: Request, service: ServiceDep) -> StreamingResponse:
    first = await _job_or_404(service, job_id, request)
    board = None
    if not first.finished:
        with suppress(J.JobStoreUnavailable):  # the estimate is dropped, not the stream
            board = await _board(service)
    hub = service.events  # app/style/events.py: the job's shared watcher
    listener = None if first.finished else hub.join(job_id)  # 429 past STREAMS_PER_JOB or MAX_EVENT_STREAMS
    base = _base(request)
    body = hub.stream(first, board, listener, lambda job, eta: job_view(job, base, eta), SSE_KEEPALIVE_S)
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                             background=listener.background if listener else None)


# --------------------------------------------------------------------------------------------- cancel / delete

@router.delete("/jobs/{job_id}", summary="Cancel an unfinished job, or delete a finished one",
               description="A queued or running job is cancelled (a running one stops within one optimisation "
                           "step and frees its worker): 200 with the job, status `cancelled` (or its final status "
                           "if it finished first). A finished job (succeeded, failed, cancelled) is deleted with "
                           "its files: 204. Deleting a just-cancelled job is a second DELETE.",
               response_model=StyleJob, responses={204: {"description": "deleted"}, **_errors(404, 503)})
async def delete_job(job_id: str, request: Request, service: ServiceDep) -> Response:
    job = await _job_or_404(service, job_id, request)
    if not job.finished:
        job = await _store(service, "cancel", job_id)
        if job is None:
            raise NotFound(f"no style job {job_id!r}")
        return JSONResponse(job_view(job, _base(request)))
    if not await _store(service, "delete", job_id):
        raise NotFound(f"no style job {job_id!r}")
    return Response(status_code=204)


# --------------------------------------------------------------------------------------------- presets

@router.get("/presets", response_model=PresetList, summary="The preset style paintings")
async def list_presets(request: Request) -> dict:
    base = _base(request)
    return {"presets": [{**p, "image_url": f"{base}/presets/{p['name']}"}
                        for p in _presets_module().list_presets()]}


@router.get("/presets/{name}", summary="A preset painting's image", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}, **_errors(404)})
async def preset_image(name: str) -> Response:
    presets = _presets_module()
    try:
        path = presets.preset_path(name)
    except KeyError:
        raise NotFound(f"unknown style preset {name!r}; available presets: {', '.join(_preset_names())}") from None
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
            responses=_errors(422, 503))
async def estimate(service: ServiceDep,
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
        raise _invalid("width" if width is None else "height", "give both width and height, or neither",
                       "missing")
    board = await _board(service, fresh=True)
    if board is None:
        raise ServiceUnavailable("the time estimate cannot be computed right now; retry shortly",
                                 headers={"Retry-After": "2"})
    content_size = (width, height) if width and height else None
    return board.estimate(params.size or service.default_size, params.steps, content_size, style_count)


FORM_OPTIONS = (*OPTION_FIELDS, *LIST_FIELDS)  # every option field of the submit form


def _option_type(annotation: Any) -> tuple[str, list | None]:
    """(JSON type, choices) of a StyleParams field's annotation (Optional stripped)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] \
        if typing.get_origin(annotation) in (typing.Union, types.UnionType) else [annotation]
    inner = args[0] if len(args) == 1 else annotation
    if typing.get_origin(inner) is Literal:
        return "string", list(typing.get_args(inner))
    if inner is bool:
        return "boolean", [False, True]
    if inner is int:
        return "integer", None
    if inner is float:
        return "number", None
    if typing.get_origin(inner) is list:
        item = (typing.get_args(inner) or (str,))[0]
        return ("array of numbers" if item in (int, float) else "array of names"), None
    return "string", None


def _option_limits(field) -> dict:
    limits: dict[str, Any] = {}
    for meta in field.metadata:
        for attr, key, extra in (("ge", "min", None), ("gt", "min", "exclusive_min"), ("le", "max", None),
                                 ("lt", "max", "exclusive_max"), ("min_length", "min_items", None),
                                 ("max_length", "max_items", None)):
            value = getattr(meta, attr, None)
            if value is not None:
                limits[key] = value
                if extra:
                    limits[extra] = True
    return limits


@router.get("/options", response_model=StyleOptions, responses=_errors(503),
            summary="Every job option's default and bounds (what a form should offer)",
            description="Read from the engine's option model and this server's settings, so a client never "
                        "writes them twice: `defaults[name]` and `limits[name].min/.max` (or `.choices`) for each "
                        "form field of POST /v1/style/jobs; the default size is this device's (or "
                        "STYLE_DEFAULT_SIZE).")
async def options(settings: SettingsDep, service: ServiceDep) -> dict:
    defaults, limits, types, descriptions = {}, {}, {}, {}
    for name in FORM_OPTIONS:
        field = StyleParams.model_fields[name]
        kind, choices = _option_type(field.annotation)
        defaults[name] = field.get_default(call_default_factory=True)
        limits[name] = {**_option_limits(field), **({"choices": choices} if choices else {})}
        if kind in ("integer", "number"):
            limits[name].setdefault("min", None)
            limits[name].setdefault("max", None)
        types[name] = kind
        descriptions[name] = field.description or ""
    defaults["size"] = service.default_size
    return {"defaults": defaults, "limits": limits, "types": types, "descriptions": descriptions,
            "presets": _preset_names(), "max_styles": MAX_STYLES, "max_upload_bytes": settings.max_upload_bytes,
            "max_upload_mb": round(settings.max_upload_bytes / 2**20, 2),
            "max_image_pixels": settings.max_image_pixels, "max_job_pixel_steps": settings.max_job_pixel_steps}
