"""Liveness and readiness probes."""
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is up")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, response_model_exclude_none=True, summary="All models are loaded",
            responses={503: {"model": Readiness, "description": "still loading, or loading failed"}})
async def readyz(request: Request):
    registry = getattr(request.app.state, "registry", None)
    if registry is None:
        return JSONResponse({"status": "loading", "device": "", "models": []}, status_code=503)
    body = Readiness(status=registry.status, device=str(registry.device), models=registry.loaded,
                     error=registry.error)
    if registry.status != "ready":
        return JSONResponse(body.model_dump(), status_code=503)
    return body
