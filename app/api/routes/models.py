"""What is being served: the manifest's models with their metrics and provenance."""

from app.api.routes import versioned_router
from app.api.deps import RegistryDep
from app.api.schemas import ModelInfo, ModelList, error_responses

router = versioned_router("models", tags=["models"])


def _describe(registry, name: str) -> dict:
    """The registry's description plus the calibration the handler applies (None when it serves raw scores)."""
    return {**registry.describe(name), "calibration": registry.handler(name).calibration}


@router.get("", response_model=ModelList, summary="Every model served")
async def list_models(registry: RegistryDep) -> dict:
    return {"models": [_describe(registry, name) for name in registry.handlers]}


@router.get("/{name}", response_model=ModelInfo, summary="One model", responses=error_responses(404))
async def get_model(name: str, registry: RegistryDep) -> dict:
    return _describe(registry, name)
