"""The FastAPI application: create_app() wires settings, routers, middleware and the model lifespan."""
import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path

import anyio
import torch
from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.middleware.cors import CORSMiddleware

from app.api.error_handlers import install_error_handlers
from app.api.openapi import declare_api_keys
from app.api.routes import health, metrics, models, sentiment
from app.api.routes.images import image_router
from app.api.services import AppServices, services_of
from app.api.v2 import routes as v2
from app.core.config import Settings
from app.core.lifecycle import install_signal_chain
from app.core.limits import BodySizeLimitMiddleware
from app.core.uploads import UploadGuardMiddleware
from app.serving.loading import StartupError, resolve_device
from app.core.observability import REQUEST_ID_HEADER, RequestContextMiddleware, configure_logging
from app.serving.registry import ModelRegistry
from app.core.security import APIKeyMiddleware, parse_api_keys
from app.style.install import install as install_style

logger = logging.getLogger("app")
WEB_DIR = Path(__file__).resolve().parent / "web"  # the browser front end: plain HTML/CSS/ES modules, no build


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    services = services_of(app)
    settings = services.settings
    install_signal_chain(services.shutdown)  # SIGTERM ends open event streams (app/core/lifecycle.py)
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
    registry = services.registry = prepare_registry(services)
    services.decode_limiter = anyio.CapacityLimiter(settings.decode_concurrency)
    # Weights load in the background so /healthz answers at once and /readyz reports progress.
    loading = asyncio.create_task(registry.load(), name="load-models")
    try:
        async with AsyncExitStack() as installed:
            for installed_lifespan in services.lifespans:  # style jobs' workers (app/style/install.py)
                await installed.enter_async_context(installed_lifespan(services))
            if services.wait_until_ready:
                await until_ready(services, loading)
            yield
    finally:
        loading.cancel()
        with suppress(asyncio.CancelledError):
            await loading
        await registry.close()


def prepare_registry(services: AppServices) -> ModelRegistry:
    """Everything that must hold before serving (device, manifest, checksums); raises StartupError."""
    settings = services.settings
    try:
        device = resolve_device(settings.device)
        registry = ModelRegistry.from_settings(settings, device,
                                               latency=lambda name: services.metrics.predict_latency.labels(name).observe)
    except StartupError as exc:
        logger.error("refusing to start: %s", exc)
        raise
    logger.info("serving %d models from %s on %s", len(registry.handlers), settings.weights_dir, device)
    return registry


async def until_ready(services: AppServices, loading: asyncio.Task) -> None:
    """create_app(wait_until_ready=True): hold the startup until every model is loaded and every installed probe
    that holds the startup (with embedded style workers: one worker with VGG loaded and the device measured) is
    past "starting"; StartupError when loading failed or took longer than READY_TIMEOUT_S, so the app never starts
    serving half-loaded (and a test never hangs on it)."""
    registry = services.registry
    probes = [probe for probe in services.probes.values() if probe.holds_startup()]
    timeout_s = services.settings.ready_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.shield(loading)
            while any(probe.state()[0] == "starting" for probe in probes):
                await asyncio.sleep(0.05)
    except TimeoutError:
        waiting = (["the models"] if registry.status == "loading" else []) + \
                  [probe.waiting_for for probe in probes if probe.state()[0] == "starting"]
        raise StartupError(f"not ready after READY_TIMEOUT_S={timeout_s:g} s: still waiting for "
                           f"{' and '.join(waiting) or 'the models'}") from None
    if registry.status != "ready":
        raise StartupError(f"model loading failed: {registry.error}")
    for probe in probes:
        state, detail = probe.state()
        if state == "failed":
            raise StartupError(f"{probe.waiting_for} failed to start: {detail}")
    ready = ", ".join(f"{probe.field} {probe.state()[0]}" for probe in services.probes.values())
    logger.info("ready: %d models%s", len(registry.loaded), f", {ready}" if ready else "")


def create_app(settings: Settings | None = None, *, wait_until_ready: bool = False) -> FastAPI:
    """The app. wait_until_ready=True (tests): the lifespan's startup returns only once the models are loaded and a
    style worker is ready, so `with TestClient(create_app(settings, wait_until_ready=True)) as client:` serves at
    once; a failed or overlong load raises StartupError from the startup instead. Off (serving), models load in the
    background while /healthz answers and /readyz reports progress."""
    settings = settings or Settings()
    configure_logging(settings)
    # FastAPIOffline: a FastAPI whose /docs (Swagger UI) and /redoc load their JS/CSS from the fastapi-offline
    # package (served under /static-offline-docs), not from a CDN, so the docs work with no internet.
    app = FastAPIOffline(
        title="Model server",
        summary="Handwritten digits, CIFAR-10 objects and sentence sentiment with PyTorch",
        version="1.0.0",
        lifespan=lifespan,
    )
    services = app.state.services = AppServices(settings, wait_until_ready=wait_until_ready)
    # Middleware, innermost first: body limit, body read timeout + upload slots (taken when a body is read),
    # API keys (before any body is read), CORS (answers preflights and adds its headers to 401s too),
    # request id + access log + request counter (sees every response).
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(UploadGuardMiddleware, timeout_s=settings.body_timeout_s,
                       max_concurrent=settings.max_concurrent_uploads, large_bytes=settings.large_upload_bytes,
                       min_rate=settings.min_body_rate_bytes_s)
    app.add_middleware(APIKeyMiddleware, keys=parse_api_keys(settings.api_key_list))
    if settings.cors_origin_list:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origin_list,
                           allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type", REQUEST_ID_HEADER],
                           expose_headers=[REQUEST_ID_HEADER, "Location", "Retry-After", "X-Style-Seconds",
                                           "X-Style-Ignored"])
    app.add_middleware(RequestContextMiddleware, metrics=services.metrics)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(models.router)
    app.include_router(image_router("digits", "a handwritten digit"))
    app.include_router(image_router("objects", "a photo of an everyday object (CIFAR-10 classes)"))
    app.include_router(sentiment.router)
    app.include_router(v2.router)  # the Open Inference Protocol (app/api/v2/)
    if settings.style_jobs_enabled:
        install_style(app)  # routes, error answers, metrics, readiness, workers' lifespan (app/style/install.py)
    install_web(app)
    if settings.api_key_list:
        declare_api_keys(app)
    return app


def install_web(app: FastAPI) -> None:
    """The single-page front end: `/` is its index.html, `/web/...` its CSS and ES modules (public API only)."""
    index = WEB_DIR / "index.html"

    @app.get("/", include_in_schema=False)
    async def web_index() -> FileResponse:
        return FileResponse(index, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})

    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")


app = create_app()
