"""Liveness and readiness probes."""
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import ServicesDep
from app.api.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is up")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, response_model_exclude_none=True,
            summary="All models are loaded (and whether style jobs are ready)",
            responses={503: {"model": Readiness, "description": "still loading, or loading failed"}})
async def readyz(services: ServicesDep):
    registry = services.registry
    style, style_detail = services.readiness("style") or ("disabled", None)
    if registry is None:
        return JSONResponse({"status": "loading", "device": "", "models": [], "style": style,
                             **({"style_detail": style_detail} if style_detail else {})}, status_code=503)
    body = Readiness(status=registry.status, device=str(registry.device), models=registry.loaded,
                     backends=registry.backends, error=registry.error, style=style, style_detail=style_detail)
    if registry.status != "ready":
        return JSONResponse(body.model_dump(exclude_none=True), status_code=503)
    return body
