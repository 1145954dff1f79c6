"""Request dependencies: settings and the model registry live on app.state, set up by the lifespan.

All are `async def`: FastAPI runs a plain `def` dependency in the thread pool, a hop that costs more than the
attribute read it wraps, on every request."""
from typing import Annotated

import anyio

from fastapi import Depends, Query, Request
from fastapi.exceptions import RequestValidationError

from app.core.config import Settings
from app.core.errors import ServiceUnavailable
from app.serving.registry import ModelRegistry, ServedModel

DEFAULT_TOP_K = 3


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_registry(request: Request) -> ModelRegistry:
    return _started(request, "registry")


async def get_decode_limiter(request: Request) -> anyio.CapacityLimiter:
    return _started(request, "decode_limiter")


def _started(request: Request, name: str):
    """What the lifespan puts on app.state; absent before startup."""
    value = getattr(request.app.state, name, None)
    if value is None:
        raise ServiceUnavailable("the server is starting; retry shortly", headers={"Retry-After": "2"})
    return value


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
DecodeLimiterDep = Annotated[anyio.CapacityLimiter, Depends(get_decode_limiter)]


def served_model_for(task: str):
    """A dependency resolving `?model=` (default: the task's default model) to a ready model of `task`."""

    async def served_model(
        request: Request,
        registry: RegistryDep,
        model: Annotated[str | None, Query(description=f"a {task} model name; default: the task's default "
                                                       "model (see GET /v1/models)")] = None,
    ) -> ServedModel:
        served = registry.for_task(task, model)
        request.state.model = served.handler.name  # labels the predict latency metric (TimedRoute)
        return served

    return served_model


def checked_top_k(served: ServedModel, top_k: int | None) -> int:
    """top_k's upper bound is the chosen model's class count, known only at request time."""
    limit = len(served.handler.classes)
    if top_k is None:
        return min(DEFAULT_TOP_K, limit)
    if top_k > limit:
        raise RequestValidationError([{
            "type": "less_than_equal", "loc": ("query", "top_k"), "input": top_k, "ctx": {"le": limit},
            "msg": f"Input should be less than or equal to {limit}",
        }])
    return top_k


TopKQuery = Annotated[int | None, Query(ge=1, description=f"how many classes to return, 1 to the model's class "
                                                          f"count; default {DEFAULT_TOP_K} (or the class count "
                                                          f"when smaller)")]
