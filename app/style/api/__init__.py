"""The style jobs' HTTP API (mounted by app.style.install): the jobs themselves, and the catalogue a client reads
before submitting (presets, estimate, options), and the instant result (instant.py)."""
from fastapi import APIRouter

from app.style.api import catalog, instant, routes

router = APIRouter()
router.include_router(routes.router)
router.include_router(catalog.router)
router.include_router(instant.router)
