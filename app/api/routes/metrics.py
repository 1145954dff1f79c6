"""GET /metrics: Prometheus text format, from the app's own CollectorRegistry (see app/core/observability.py).

Open without an API key even when API_KEYS is set (like /healthz): it holds only aggregate counts, timings,
route templates and model names. Keep it off the public network (scrape it on an internal port or path).
"""
import anyio
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format"}})
async def metrics(services: ServicesDep) -> Response:
    metrics = services.metrics

    def scrape() -> bytes:  # blocking: collectors may read a job store (SQLite, Redis)
        return generate_latest(metrics.registry)

    return Response(await anyio.to_thread.run_sync(scrape), media_type=CONTENT_TYPE_LATEST)
