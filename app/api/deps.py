"""Request dependencies: everything reads the app's AppServices (app/api/services.py), which create_app and the
lifespan fill in.

All are `async def`: FastAPI runs a plain `def` dependency in the thread pool, a hop that costs more than the
attribute read it wraps, on every request."""
from typing import Annotated, TypeVar

import anyio

from fastapi import Depends, Query, Request
from fastapi.exceptions import RequestValidationError

from app.api.services import AppServices, services_of
from app.core.config import Settings
from app.core.errors import ServiceUnavailable
from app.serving.registry import ModelRegistry, ServedModel

DEFAULT_TOP_K = 3
T = TypeVar("T")


async def get_services(request: Request) -> AppServices:
    return services_of(request.app)


async def get_settings(request: Request) -> Settings:
    return services_of(request.app).settings


async def get_registry(request: Request) -> ModelRegistry:
    return started(services_of(request.app).registry)


async def get_decode_limiter(request: Request) -> anyio.CapacityLimiter:
    return started(services_of(request.app).decode_limiter)


def started(value: T | None) -> T:
    """What the lifespan sets up; None before startup (503)."""
    if value is None:
        raise ServiceUnavailable("the server is starting; retry shortly", headers={"Retry-After": "2"})
    return value


ServicesDep = Annotated[AppServices, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
DecodeLimiterDep = Annotated[anyio.CapacityLimiter, Depends(get_decode_limiter)]


def served_model_for(task: str):
    """A dependency resolving `?model=` (default: the task's default model) to a ready model of `task`."""

    async def served_model(
        registry: RegistryDep,
        model: Annotated[str | None, Query(description=f"a {task} model name; default: the task's default "
                                                       "model (see GET /v1/models)")] = None,
    ) -> ServedModel:
        return registry.for_task(task, model)

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
