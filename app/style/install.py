"""Style jobs plug into the app with one call, install(app): their routes, the error answers of their job store,
their metrics, their /readyz field and the lifespan that starts and stops their workers. The core (app/core,
app/api) and app/main.py know nothing else of them."""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.api.services import AppServices, Readiness, ReadinessProbe, services_of
from app.style.jobs import JobStoreFull, JobStoreUnavailable
from app.style.metrics import StyleMetrics
from app.style.service import make_style_service
from app.style.state import InstantState, StyleState

logger = logging.getLogger("app.style")


def install(app: FastAPI) -> None:
    from app.style.api import router

    services = services_of(app)
    metrics = StyleMetrics(services.metrics.registry, lambda: state.service)
    state = services.add_extension(StyleState(InstantState(services.settings), metrics))

    def readiness() -> Readiness:
        """Whether a style job submitted now starts at once."""
        if state.service is None:
            return "starting", "the style service is starting"
        return state.service.readiness()

    # JOB_BACKEND=redis: the workers are other processes, started on their own; the startup does not wait for them
    services.probes["style"] = ReadinessProbe("style", "the style worker", readiness,
                                              holds_startup=lambda: services.settings.job_backend == "embedded")
    services.lifespans.append(run_style_service)
    app.include_router(router)
    app.add_exception_handler(JobStoreUnavailable, job_store_unavailable)
    app.add_exception_handler(JobStoreFull, job_store_full)


@asynccontextmanager
async def run_style_service(services: AppServices) -> AsyncIterator[None]:
    """Style jobs run in worker processes: this server's own (embedded, spawned here and loading VGG in the
    background, so the first job does not wait) or `python -m app.worker` on other hosts (JOB_BACKEND=redis);
    see app/style/service.py."""
    state = services.extension(StyleState)
    assert state is not None and services.registry is not None
    service = make_style_service(services.settings, services.registry.device)
    try:
        await service.start()
        service.events.close_on(services.shutdown)  # open event streams end on SIGTERM
        state.service = service
        yield
    finally:
        await service.stop()


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
