"""The style API's response models and its OpenAPI pieces (error responses, the multipart request body)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.api.schemas import ErrorBody, ValidationErrorBody
from app.style.api.form import OPTION_FIELDS
from app.style.options import StyleParams


class Progress(BaseModel):
    step: int = Field(description="loss evaluations done")
    total: int = Field(description="loss evaluations in all (= steps)")
    fraction: float = Field(description="step / total, 0..1")


class StyleJob(BaseModel):
    id: str = Field(description="unguessable job id")
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    queue_position: int | None = Field(description="1-based place in the queue while queued, else null")
    progress: Progress
    created_at: str = Field(description="ISO 8601 UTC")
    started_at: str | None
    finished_at: str | None
    params: dict[str, Any] = Field(description="the resolved options (defaults filled in), and `styles`: the "
                                   "style images in blend order ({\"preset\": name} or {\"upload\": filename})")
    losses: dict[str, float] | None = Field(description="latest losses (content, style, tv, total)")
    error: str | None = Field(description="why the job failed (status failed only)")
    notice: str | None = Field(None, description="e.g. that the job was re-queued after the server stopped")
    attempts: int = Field(description="times a worker started this job")
    result_url: str | None = Field(description="the PNG, once succeeded")
    preview_url: str | None = Field(description="the latest intermediate PNG, once there is one")
    events_url: str
    owner: str | None = Field(None, description="the name of the API key that submitted it (null without API_KEYS)")
    eta_s: float | None = Field(None, description="seconds until this job finishes, while queued or running: the "
                                "remaining work of the jobs ahead of it plus its own, priced with the step times "
                                "measured on the device that runs it; null once finished (or when no worker runs "
                                "jobs)")


class StyleEstimate(BaseModel):
    eta_s: float = Field(description="seconds until a job with these options, submitted now, would finish")
    queued_ahead: int = Field(description="jobs queued before it")
    seconds_per_step: float = Field(description="mean seconds per step (loss evaluation) of its run")
    wait_s: float = Field(description="seconds before a worker is free for it")
    run_s: float = Field(description="seconds of its own run (steps and fixed costs)")
    workers: int = Field(description="workers taking jobs (0: none; the estimate then assumes one)")
    device: str = Field(description="the device kind whose measured step times price the run")
    measured: bool = Field(description="false until that device measured anything (built-in figures then)")


class StyleOptions(BaseModel):
    defaults: dict[str, Any] = Field(description="the value a job gets for each form field it leaves out (null: "
                                     "chosen per job, e.g. a random seed, equal blend weights, the engine's layers)")
    limits: dict[str, dict[str, Any]] = Field(description="bounds of each form field: numbers have `min` and `max` "
                                              "(null: unbounded; `exclusive_min`/`exclusive_max` true when the "
                                              "bound itself is refused), lists `min_items`/`max_items`, fields "
                                              "with a fixed set of values `choices`")
    types: dict[str, str] = Field(description="integer, number, boolean, string or array (of numbers or names)")
    descriptions: dict[str, str]
    presets: list[str] = Field(description="the names style_preset accepts")
    max_styles: int = Field(description="most style images (uploads and presets) in one job")
    max_upload_bytes: int = Field(description="largest request body (MAX_UPLOAD_BYTES)")
    max_upload_mb: float = Field(description="the same in MiB (the page's 'MB')")
    max_image_pixels: int = Field(description="largest image, width x height (MAX_IMAGE_PIXELS)")
    max_job_pixel_steps: int = Field(description="most output pixels x steps in one job (MAX_JOB_PIXEL_STEPS)")


class StyleJobList(BaseModel):
    jobs: list[StyleJob] = Field(description="newest first")
    total: int
    limit: int
    offset: int
    next: str | None = Field(description="the next page, null on the last")


class Preset(BaseModel):
    name: str
    title: str
    artist: str
    year: Any
    licence: str
    image_url: str


class PresetList(BaseModel):
    presets: list[Preset]


def style_errors(*codes: int, **descriptions: str) -> dict[int, dict]:
    texts = {400: "an image that cannot be decoded", 404: "unknown job or preset",
             409: "the job is not in a state that has this (the detail names its status)",
             410: "the job failed or was cancelled: it will never have a result",
             413: "body over MAX_UPLOAD_BYTES or image over MAX_IMAGE_PIXELS",
             415: "not multipart/form-data, or a file that is not a supported image",
             422: "invalid options, unknown preset, no style, a job costing more than MAX_JOB_PIXEL_STEPS, an image "
                  "too elongated for the size",
             429: "MAX_QUEUED_JOBS jobs are queued, or MAX_QUEUED_JOBS_PER_OWNER of this API key's (Retry-After)",
             503: "the server is starting, or the job store (Redis) is unreachable (Retry-After)",
             507: "no space left in the job store (DATA_DIR volume, or Redis memory) for the job (Retry-After)"}
    return {code: {"model": ValidationErrorBody if code == 422 else ErrorBody, "description": texts[code]}
            for code in codes}


JOB_REQUEST_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["content"],
        "properties": {
            "content": {"type": "string", "format": "binary", "description": "the photo to stylise"},
            "style": {"type": "array", "items": {"type": "string", "format": "binary"},
                      "description": "style image(s); repeat the field for a blend"},
            "style_preset": {"type": "array", "items": {"type": "string"},
                             "description": "preset name(s) from GET /v1/style/presets; repeatable"},
            "style_weights": {"type": "string", "description": "blend weights, one per style in the order sent "
                              "(uploads and presets as they appear in the form): '0.7,0.3' or repeated"},
            **{name: {"type": "string", "description": (StyleParams.model_fields[name].description or "")}
               for name in OPTION_FIELDS},
        },
    }}},
}
