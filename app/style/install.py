"""Style jobs plug into the app with one call: their routes, the error answers of their job store and their
metrics. The core (app/core, app/api) knows nothing of them; the lifespan starts and stops the service."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.style.jobs import JobStoreFull, JobStoreUnavailable
from app.style.metrics import StyleMetrics

logger = logging.getLogger("app.style")


def install(app: FastAPI) -> None:
    from app.style.api import router

    app.include_router(router)
    app.add_exception_handler(JobStoreUnavailable, job_store_unavailable)
    app.add_exception_handler(JobStoreFull, job_store_full)
    app.state.style_metrics = StyleMetrics(app.state.metrics.registry,
                                           lambda: getattr(app.state, "style_service", None))


async def job_store_unavailable(request: Request, exc: JobStoreUnavailable) -> JSONResponse:
    logger.warning("%s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": "style jobs are unavailable for a moment: the job store (Redis) cannot be "
                                   "reached; retry shortly (the classifiers are not affected)"},
                        status_code=503, headers={"Retry-After": "2"})


async def job_store_full(request: Request, exc: JobStoreFull) -> JSONResponse:
    logger.error("%s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": "the job store (Redis) is out of memory and cannot take this job; finished "
                                   "jobs are deleted after RESULT_TTL, retry later"},
                        status_code=507, headers={"Retry-After": "60"})
