"""Liveness and readiness probes."""
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is up")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, response_model_exclude_none=True,
            summary="All models are loaded (and whether style jobs are ready)",
            responses={503: {"model": Readiness, "description": "still loading, or loading failed"}})
async def readyz(request: Request):
    registry = getattr(request.app.state, "registry", None)
    style, style_detail = style_readiness(request)
    if registry is None:
        return JSONResponse({"status": "loading", "device": "", "models": [], "style": style,
                             **({"style_detail": style_detail} if style_detail else {})}, status_code=503)
    body = Readiness(status=registry.status, device=str(registry.device), models=registry.loaded,
                     backends=registry.backends, error=registry.error, style=style, style_detail=style_detail)
    if registry.status != "ready":
        return JSONResponse(body.model_dump(exclude_none=True), status_code=503)
    return body


def style_readiness(request: Request) -> tuple[str, str | None]:
    """(`style`, `style_detail`) of /readyz: whether a style job submitted now starts at once."""
    if not request.app.state.settings.style_jobs_enabled:
        return "disabled", None
    service = getattr(request.app.state, "style_service", None)
    if service is None:
        return "starting", "the style service is starting"
    return service.readiness()
