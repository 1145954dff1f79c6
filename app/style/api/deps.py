"""What the style routes get per request: the style service (503 while the server starts), the job store as an
async client, the time estimates, and the jobs the caller may see."""
from __future__ import annotations

import logging
from typing import Annotated

import anyio
from fastapi import Depends, Request

from app.api.routes import versioned_path
from app.api.deps import started
from app.core.errors import NotFound
from app.core.security import Caller, caller_of
from app.style.eta import EtaBoard
from app.style.jobs import Job, JobStore, JobStoreUnavailable
from app.style.service import StyleBackend
from app.style.state import StyleState, style_state

logger = logging.getLogger("app.style")
RESOURCE = "style"
PREFIX = versioned_path(RESOURCE)  # the links in job views; the routers are versioned_router(RESOURCE)


async def get_style_state(request: Request) -> StyleState:
    return style_state(request.app)


StyleStateDep = Annotated[StyleState, Depends(get_style_state)]


async def get_service(style: StyleStateDep) -> StyleBackend:
    return started(style.service)


ServiceDep = Annotated[StyleBackend, Depends(get_service)]


def base_url(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/") + PREFIX


class AsyncJobStore:
    """The job store's calls the routes make, each in a worker thread: SQLite may wait on a lock and Redis on the
    network; the event loop must not."""

    def __init__(self, store: JobStore):
        self._store = store

    async def get(self, job_id: str) -> Job | None:
        return await anyio.to_thread.run_sync(self._store.get, job_id)

    async def list(self, limit: int, offset: int, owner: str | None = None) -> tuple[list[Job], int]:
        return await anyio.to_thread.run_sync(self._store.list, limit, offset, owner)

    async def count(self, status: str, owner: str | None = None) -> int:
        return await anyio.to_thread.run_sync(self._store.count, status, owner)

    async def cancel(self, job_id: str) -> Job | None:
        return await anyio.to_thread.run_sync(self._store.cancel, job_id)

    async def delete(self, job_id: str) -> bool:
        return await anyio.to_thread.run_sync(self._store.delete, job_id)

    async def read_file(self, job_id: str, name: str) -> bytes | None:
        return await anyio.to_thread.run_sync(self._store.read_file, job_id, name)

    async def submit(self, params: dict, content: tuple[str, bytes], styles: list[dict], max_queued: int,
                     content_size: tuple[int, int], owner: str | None, max_queued_per_owner: int) -> Job:
        return await anyio.to_thread.run_sync(
            lambda: self._store.submit(params, params["steps"], content, styles, max_queued,
                                       content_size=content_size, owner=owner,
                                       max_queued_per_owner=max_queued_per_owner))


def store_of(service: StyleBackend) -> AsyncJobStore:
    return AsyncJobStore(service.store)


async def eta_board_now(service: StyleBackend, fresh: bool = False) -> EtaBoard | None:
    """The time estimates now; None (every eta_s null) when they cannot be computed, so a job can always be read."""
    try:
        return await anyio.to_thread.run_sync(service.eta_board, fresh)
    except JobStoreUnavailable:
        raise
    except Exception:
        logger.exception("time estimates unavailable")
        return None



async def visible_job(service: StyleBackend, job_id: str, request: Request | None = None) -> Job:
    """The job, if the caller may see it: with API_KEYS a job belongs to the key that submitted it, and another
    owner's job is answered exactly like an unknown one (404), so ids cannot be probed."""
    job = await store_of(service).get(job_id)
    if job is None or (request is not None and not may_see(caller_of(request.scope), job)):
        raise NotFound(f"no style job {job_id!r} (unknown, deleted, or expired after RESULT_TTL)")
    return job


def may_see(caller: Caller | None, job: Job) -> bool:
    return caller is None or caller.admin or job.owner == caller.name


def listed_owner(request: Request) -> str | None:
    """Whose jobs a listing shows: the caller's, or everyone's (no API_KEYS, or an admin key)."""
    caller = caller_of(request.scope)
    return None if caller is None or caller.admin else caller.name
