"""The Open Inference Protocol (KServe V2) over HTTP/REST: health, metadata and inference for every classifier.

Thin routes over app/api/v2/dataplane.py, with /v1's limits, API keys, request ids, metrics and batcher. Errors
are the protocol's {"error": "..."} (app.core.errors.error_body picks the shape by path).
"""
import json
from typing import Annotated

import anyio

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response

from app.api.deps import DecodeLimiterDep, RegistryDep, SettingsDep
from app.api.inference import media_type
from app.api.v2 import dataplane
from app.api.v2.schemas import (ERROR_RESPONSES, InferenceRequest, InferenceResponse, ModelMetadata, ServerMetadata,
                                inline_schema)
from app.core.config import V2_PREFIX, Settings
from app.core.errors import UnsupportedMediaType
from app.api.services import services_of
from app.api.timed_route import TimedRoute
from app.serving.handlers.base import ModelHandler
from app.serving.registry import ModelRegistry

SERVER_NAME = "model-server"
EXTENSIONS = ["binary_tensor_data", "classification"]
HEADER_LENGTH = "Inference-Header-Content-Length"
VERSIONED = "/models/{model_name}/versions/{model_version}"
UNVERSIONED = "/models/{model_name}"

router = APIRouter(prefix=V2_PREFIX, tags=["Open Inference Protocol (v2)"], route_class=TimedRoute)
ModelName = Annotated[str, Path(description="a model name (GET /v1/models) or a task (its default model)")]

INFER_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": inline_schema(InferenceRequest)},
        "application/octet-stream": {"schema": {
            "type": "string", "format": "binary",
            "description": "the JSON request, then the binary tensor data of the inputs whose parameters give "
                           f"binary_data_size; the {HEADER_LENGTH} header gives the JSON's length in bytes"}},
    },
}


def _ready(registry: ModelRegistry | None) -> bool:
    return registry is not None and registry.status == "ready"


def _registry_or_none(request: Request) -> ModelRegistry | None:
    return services_of(request.app).registry


@router.get("/health/live", summary="Server live", response_class=Response,
            responses={200: {"description": "live (empty body)"}})
async def live() -> Response:
    return Response(status_code=200)


@router.get("/health/ready", summary="Server ready: every model loaded", response_class=Response,
            responses={200: {"description": "ready (empty body)"}, 400: {"description": "not ready (empty body)"}})
async def ready(request: Request) -> Response:
    return Response(status_code=200 if _ready(_registry_or_none(request)) else 400)


@router.get("", summary="Server metadata", response_model=ServerMetadata, responses=ERROR_RESPONSES)
@router.get("/", include_in_schema=False)
async def server_metadata(request: Request) -> dict:
    return {"name": SERVER_NAME, "version": request.app.version, "extensions": EXTENSIONS}


@router.post("/repository/index", summary="The models and their states (Triton's repository index)",
             responses=ERROR_RESPONSES)
async def repository_index(registry: RegistryDep) -> list[dict]:
    state = "READY" if _ready(registry) else ("UNAVAILABLE" if registry.status == "failed" else "LOADING")
    return [{"name": name, "version": dataplane.MODEL_VERSION, "state": state} for name in registry.handlers]


async def _latest(registry: RegistryDep, model_name: ModelName) -> ModelHandler:
    return dataplane.resolve(registry, model_name, None)


async def _versioned(registry: RegistryDep, model_name: ModelName,
                     model_version: Annotated[str, Path(description="the only version is 1")]) -> ModelHandler:
    return dataplane.resolve(registry, model_name, model_version)


def _model_routes(path: str, resolve_model, which: str) -> None:
    """Readiness, metadata and inference of one model, at `path` (with or without a version)."""
    model = Annotated[ModelHandler, Depends(resolve_model)]

    @router.get(path + "/ready", summary=f"Model ready{which}", response_class=Response,
                responses={**ERROR_RESPONSES, 200: {"description": "ready (empty body)"},
                           400: {"description": "not ready (empty body)"}})
    async def model_ready(handler: model, registry: RegistryDep) -> Response:
        return Response(status_code=200 if _ready(registry) else 400)

    @router.get(path, summary=f"Model metadata{which}", response_model=ModelMetadata, responses=ERROR_RESPONSES)
    async def model_metadata(handler: model, registry: RegistryDep) -> dict:
        registry.for_task(handler.task, handler.name)  # 503 while loading: the signature needs the network
        return dataplane.model_metadata(handler)

    @router.post(path + "/infer", summary=f"Inference{which}", response_model=InferenceResponse,
                 openapi_extra={"requestBody": INFER_REQUEST_BODY}, responses=ERROR_RESPONSES)
    async def infer(request: Request, handler: model, registry: RegistryDep, settings: SettingsDep,
                    limiter: DecodeLimiterDep) -> Response:
        return await _infer(request, handler, registry, settings, limiter)


async def _infer(request: Request, handler: ModelHandler, registry: ModelRegistry, settings: Settings,
                 limiter: anyio.CapacityLimiter) -> Response:
    if media_type(request) == "multipart/form-data":
        raise UnsupportedMediaType("send the inference request as JSON (application/json), binary tensor data "
                                   f"after it with the {HEADER_LENGTH} header; multipart is /v1's")
    served = registry.for_task(handler.task, handler.name)
    body = await request.body()
    with served.timed():
        inference, binary = dataplane.parse_request(body, request.headers.get(HEADER_LENGTH))
        header, outputs = await dataplane.infer(served, inference, binary, settings, limiter)
    document = json.dumps(header, separators=(",", ":")).encode()
    binary_outputs = [output.raw for output in outputs if output.binary]
    if not binary_outputs:
        return Response(document, media_type="application/json")
    return Response(document + b"".join(binary_outputs), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(document))})


_model_routes(UNVERSIONED, _latest, "")
_model_routes(VERSIONED, _versioned, " (a version)")
