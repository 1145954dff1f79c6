"""Style jobs over HTTP: submit, list, read, watch (server-sent events), fetch the images, cancel and delete.

The optimisation runs in worker processes (app.style.embedded_worker, app.worker), never on the event loop; these routes only
validate requests, read and write the job store, and stream files.
"""
from __future__ import annotations

import errno
import sqlite3
from contextlib import suppress

import anyio
from typing import Annotated

from fastapi import Query, Request

from app.api.routes import versioned_router
from fastapi.responses import JSONResponse, Response, StreamingResponse

from app.api.deps import DecodeLimiterDep, SettingsDep
from app.api.schemas import ErrorBody
from app.api.input_errors import as_api_error
from app.core.errors import APIError, NotFound
from preprocessing.errors import InputError
from app.core.security import caller_of
from preprocessing.decoding import declared_pixels, memory_returned_after, open_image
from app.style.api.deps import (RESOURCE, ServiceDep, base_url, eta_board_now, listed_owner, store_of,
                                visible_job)
from app.style.api.form import (ACCEPTED, KNOWN_FIELDS, check_cost, check_shape, invalid_field, parse_options,
                                read_files, style_form)
from app.style.api.schemas import JOB_REQUEST_BODY, StyleJob, StyleJobList, style_errors
from app.style.api.views import job_view, not_ready
from app.style.instant import decoder_problem
from app.style.jobs import PREVIEW_FILE, QUEUED, RESULT_FILE, RUNNING, SUCCEEDED, JobStoreUnavailable, QueueFull
from app.style.service import StyleBackend

MAX_OFFSET = 1_000_000_000  # list offsets beyond SQLite's 64-bit integers used to be a 500
SSE_KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing an idle stream

router = versioned_router(RESOURCE, tags=["style"])


# --------------------------------------------------------------------------------------------- submit

@router.post("/jobs", status_code=202, response_model=StyleJob, summary="Submit a style-transfer job",
             description="multipart/form-data: `content` (image file), one or more `style` files and/or "
                         "`style_preset` names (a blend when several; `style_weights` one per style, in form "
                         "order), options as fields. Answers 202 with the job and its URL in `Location`.",
             openapi_extra={"requestBody": JOB_REQUEST_BODY},
             responses=style_errors(400, 413, 415, 422, 429, 503, 507))
async def submit_job(request: Request, settings: SettingsDep, limiter: DecodeLimiterDep,
                     service: ServiceDep) -> JSONResponse:
    async with style_form(request, KNOWN_FIELDS, ACCEPTED) as items:
        content, styles = await read_files(items)
    params, options = parse_options(items, styles, service.default_size)
    if params["init"] == "instant":  # the worker would fail it: say so now (the decoder is looked up as it does)
        problem = decoder_problem([settings.weights_dir, settings.style_vgg_weights.parent])
        if problem:
            raise invalid_field("init", f"init=instant needs the style decoder: {problem}")
    caller = caller_of(request.scope)
    owner = caller.name if caller is not None else None
    per_owner = settings.max_queued_jobs_per_owner if owner is not None else 0
    queued = await store_of(service).count(QUEUED)
    if queued >= settings.max_queued_jobs:
        raise queue_full(service, QueueFull(queued, settings.max_queued_jobs))
    if per_owner:
        mine = await store_of(service).count(QUEUED, owner)
        if mine >= per_owner:
            raise queue_full(service, QueueFull(mine, per_owner, owner))

    async def check(field: str, data: bytes) -> tuple[str, tuple[int, int]]:
        try:
            return await anyio.to_thread.run_sync(decoded_kind, data, settings.max_image_pixels, limiter=limiter)
        except (APIError, InputError) as exc:
            raise as_api_error(exc, field) from None

    content_ext, content_size = await check("content", content[1])
    check_cost(content_size, params, settings.max_job_pixel_steps)
    check_shape("content", content_size, params)
    stored_styles = []
    for index, style in enumerate(styles):
        if "data" in style:
            field = f"style[{index}]" if len(styles) > 1 else "style"
            ext, style_size = await check(field, style["data"])
            check_shape(field, style_size, params, style=True)
            stored_styles.append({"file": f"style_{index}.{ext}", "data": style["data"]})
        else:
            stored_styles.append(style)
    try:
        job = await store_of(service).submit(params, (f"content.{content_ext}", content[1]), stored_styles,
                                             settings.max_queued_jobs, content_size, owner, per_owner)
    except QueueFull as exc:
        raise queue_full(service, exc) from None
    except (OSError, sqlite3.OperationalError) as exc:
        if not _disk_full(exc):
            raise
        raise APIError("no space left on the server's data volume (DATA_DIR) to store this job; finished jobs "
                       "are deleted after RESULT_TTL, retry later", 507, {"Retry-After": "60"}) from None
    service.notify()
    board = None
    with suppress(JobStoreUnavailable):  # the job is stored: a blip now costs its estimate, not the 202
        board = await eta_board_now(service, fresh=True)
    body = job_view(job, base_url(request), board)
    return JSONResponse(body, status_code=202, headers={"Location": f"{base_url(request)}/jobs/{job.id}"})


def decoded_kind(data: bytes, max_pixels: int) -> tuple[str, tuple[int, int]]:
    """(file extension, (width, height)) of an upload that decodes fully; the pixels are dropped at once."""
    with memory_returned_after(declared_pixels(data)):
        img = open_image(data, max_pixels)
        return (img.format or "img").lower(), img.size


def _disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def queue_full(service: StyleBackend, full: QueueFull) -> APIError:
    if full.owner is not None:
        message = (f"you have {full.queued} style jobs waiting, the most one API key may queue "
                   f"(MAX_QUEUED_JOBS_PER_OWNER={full.limit}); submit more when one has started")
    else:
        message = f"the style queue is full ({full.queued} jobs waiting, MAX_QUEUED_JOBS={full.limit}); retry later"
    return APIError(message, 429, {"Retry-After": str(service.retry_after_s())})


# --------------------------------------------------------------------------------------------- read

@router.get("/jobs", response_model=StyleJobList, summary="Recent style jobs, newest first",
            responses=style_errors(422, 503))
async def list_jobs(request: Request, service: ServiceDep,
                    limit: Annotated[int, Query(ge=1, le=100, description="jobs per page")] = 20,
                    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="jobs to skip")] = 0) -> dict:
    jobs, total = await store_of(service).list(limit, offset, listed_owner(request))
    base = base_url(request)
    following = offset + len(jobs)
    board = await eta_board_now(service) if any(not job.finished for job in jobs) else None
    return {"jobs": [job_view(job, base, board) for job in jobs], "total": total, "limit": limit, "offset": offset,
            "next": f"{base}/jobs?limit={limit}&offset={following}" if following < total else None}


@router.get("/jobs/{job_id}", response_model=StyleJob, summary="One style job", responses=style_errors(404, 503))
async def get_job(job_id: str, request: Request, service: ServiceDep) -> dict:
    job = await visible_job(service, job_id, request)
    return job_view(job, base_url(request), None if job.finished else await eta_board_now(service))


def _png(data: bytes, cache: str) -> Response:
    return Response(data, media_type="image/png", headers={"Cache-Control": cache})


@router.get("/jobs/{job_id}/result", summary="The stylised image (PNG)", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "longest side = size, aspect kept"},
                       **style_errors(404, 409, 410, 503)})
async def get_result(job_id: str, request: Request, service: ServiceDep) -> Response:
    job = await visible_job(service, job_id, request)
    if job.status != SUCCEEDED:
        raise not_ready(job, "result")
    data = await store_of(service).read_file(job_id, RESULT_FILE)
    if data is None:
        raise NotFound(f"the result of job {job_id} is gone (deleted or expired)")
    return _png(data, "private, max-age=86400, immutable")


@router.get("/jobs/{job_id}/preview", summary="The latest intermediate image (PNG)", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "the final result once succeeded"},
                       **style_errors(404, 409, 503)})
async def get_preview(job_id: str, request: Request, service: ServiceDep) -> Response:
    job = await visible_job(service, job_id, request)
    name = RESULT_FILE if job.status == SUCCEEDED else PREVIEW_FILE
    data = await store_of(service).read_file(job_id, name) if job.has_preview or job.status == SUCCEEDED else None
    if data is None:
        if job.status in (QUEUED, RUNNING):
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
            responses={200: {"content": {"text/event-stream": {}}}, **style_errors(404, 503),
                       429: {"model": ErrorBody, "description": "STREAMS_PER_JOB streams are open on this job, or "
                             "MAX_EVENT_STREAMS in all (Retry-After)"}})
async def job_events(job_id: str, request: Request, service: ServiceDep) -> StreamingResponse:
    first = await visible_job(service, job_id, request)
    board = None
    if not first.finished:
        with suppress(JobStoreUnavailable):  # the estimate is dropped, not the stream
            board = await eta_board_now(service)
    hub = service.events  # app/style/events.py: the job's shared watcher
    listener = None if first.finished else hub.join(job_id)  # 429 past STREAMS_PER_JOB or MAX_EVENT_STREAMS
    base = base_url(request)
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
               response_model=StyleJob, responses={204: {"description": "deleted"}, **style_errors(404, 503)})
async def delete_job(job_id: str, request: Request, service: ServiceDep) -> Response:
    job = await visible_job(service, job_id, request)
    if not job.finished:
        job = await store_of(service).cancel(job_id)
        if job is None:
            raise NotFound(f"no style job {job_id!r}")
        return JSONResponse(job_view(job, base_url(request)))
    if not await store_of(service).delete(job_id):
        raise NotFound(f"no style job {job_id!r}")
    return Response(status_code=204)
