"""How a job looks in a response: the one JSON view shared by the routes and the event streams."""
from __future__ import annotations

import math

from app.core.errors import APIError
from app.style.eta import EtaBoard
from app.style.jobs import FAILED, QUEUED, RUNNING, SUCCEEDED, Job, iso


def job_view(job: Job, base: str, board: EtaBoard | None = None) -> dict:
    url = f"{base}/jobs/{job.id}"
    failed = job.status == FAILED
    return {
        "id": job.id, "status": job.status, "queue_position": job.queue_position,
        "progress": {"step": job.step, "total": job.total, "fraction": job.fraction},
        "created_at": iso(job.created_at), "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at), "params": job.params, "losses": finite_losses(job.losses),
        "error": job.error if failed else None, "notice": None if failed else job.error,
        "attempts": job.attempts,
        "result_url": f"{url}/result" if job.status == SUCCEEDED else None,
        "preview_url": f"{url}/preview" if job.has_preview or job.status == SUCCEEDED else None,
        "events_url": f"{url}/events", "owner": job.owner,
        "eta_s": board.for_job(job) if board is not None else None,
    }


def finite_losses(losses: dict | None) -> dict | None:
    """Losses as JSON can carry them: a value that is not finite is left out (JSON has no NaN or Infinity)."""
    if losses is None:
        return None
    return {name: value for name, value in losses.items() if isinstance(value, (int, float)) and math.isfinite(value)}


def not_ready(job: Job, what: str) -> APIError:
    if job.status == QUEUED:
        return APIError(f"job {job.id} is queued (position {job.queue_position}); its {what} is not ready yet", 409)
    if job.status == RUNNING:
        return APIError(f"job {job.id} is running (step {job.step} of {job.total}); its {what} is not ready yet",
                        409)
    why = f"failed: {job.error}" if job.status == FAILED else "was cancelled"
    return APIError(f"job {job.id} {why}; it has no {what} and never will (410 Gone)", 410)
