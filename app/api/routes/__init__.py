"""One router per resource; every versioned one is made by versioned_router (and its links by
versioned_path), the one place /v1 is applied."""
from typing import Any

from fastapi import APIRouter

from app.core.config import API_PREFIX


def versioned_path(resource: str) -> str:
    return f"{API_PREFIX}/{resource}"


def versioned_router(resource: str, **options: Any) -> APIRouter:
    """The router of /v1/<resource> (the prefix is part of each route's own path, so route templates in metrics
    and logs are the full path)."""
    return APIRouter(prefix=versioned_path(resource), **options)
