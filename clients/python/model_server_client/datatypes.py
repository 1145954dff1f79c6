"""Typed results: the server's JSON as frozen dataclasses. Each keeps the full JSON in `raw`, so fields the server
adds later are never lost."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED})


@dataclass(frozen=True)
class ScoredLabel:
    label: str
    score: float


@dataclass(frozen=True)
class Prediction:
    """One classified input: the most likely label, its calibrated probability, and the top_k classes."""

    label: str
    score: float
    top: List[ScoredLabel]
    model: str

    @property
    def scores(self) -> Dict[str, float]:
        """{label: score} of the top classes, most likely first."""
        return {item.label: item.score for item in self.top}

    @classmethod
    def from_json(cls, data: dict, model: str) -> Prediction:
        return cls(label=data["label"], score=float(data["score"]),
                   top=[ScoredLabel(t["label"], float(t["score"])) for t in data.get("top", [])], model=model)


@dataclass(frozen=True)
class ModelInfo:
    """A served model (GET /v1/models)."""

    name: str
    task: str
    architecture: str
    device: str
    default: bool
    loaded: bool
    classes: List[str]
    parameters: Optional[int]
    backend: Optional[str]
    metrics: Dict[str, Any]
    calibration: Optional[Dict[str, Any]]
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @property
    def accuracy(self) -> Optional[float]:
        value = self.metrics.get("accuracy")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def low_confidence_below(self) -> Optional[float]:
        """Below this score the model's answer is better shown as uncertain (None without calibration)."""
        return (self.calibration or {}).get("low_confidence_below")

    @classmethod
    def from_json(cls, data: dict) -> ModelInfo:
        return cls(name=data["name"], task=data.get("task", ""), architecture=data.get("architecture", ""),
                   device=data.get("device", ""), default=bool(data.get("default")), loaded=bool(data.get("loaded")),
                   classes=list(data.get("classes") or []), parameters=data.get("parameters"),
                   backend=data.get("backend"), metrics=dict(data.get("metrics") or {}),
                   calibration=data.get("calibration"), raw=data)


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    fraction: float


@dataclass(frozen=True)
class JobInfo:
    """A style job as the server last described it (GET /v1/style/jobs/{id}, or its event stream)."""

    id: str
    status: str  # queued | running | succeeded | failed | cancelled
    progress: Progress
    queue_position: Optional[int] = None
    eta_s: Optional[float] = None
    created_at: Optional[str] = None
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    params: Dict[str, Any] = field(default_factory=dict)
    losses: Optional[Dict[str, float]] = None
    error: Optional[str] = None
    notice: Optional[str] = None
    attempts: int = 0
    owner: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def succeeded(self) -> bool:
        return self.status == SUCCEEDED

    @classmethod
    def from_json(cls, data: dict) -> JobInfo:
        progress = data.get("progress") or {}
        return cls(id=data["id"], status=data["status"],
                   progress=Progress(int(progress.get("step", 0)), int(progress.get("total", 0)),
                                     float(progress.get("fraction", 0.0))),
                   queue_position=data.get("queue_position"), eta_s=data.get("eta_s"),
                   created_at=data.get("created_at"), started_at=data.get("started_at"),
                   finished_at=data.get("finished_at"), params=dict(data.get("params") or {}),
                   losses=data.get("losses"), error=data.get("error"), notice=data.get("notice"),
                   attempts=int(data.get("attempts") or 0), owner=data.get("owner"), raw=data)

    def with_progress(self, event: dict) -> JobInfo:
        """This snapshot moved on by a `progress` event ({step, total, fraction, losses, eta_s})."""
        progress = Progress(int(event.get("step", self.progress.step)), int(event.get("total", self.progress.total)),
                            float(event.get("fraction", self.progress.fraction)))
        status = RUNNING if self.status == QUEUED else self.status
        return replace(self, status=status, progress=progress, queue_position=None if status == RUNNING else
                       self.queue_position, losses=event.get("losses", self.losses),
                       eta_s=event.get("eta_s", self.eta_s))


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    artist: str
    year: Any
    licence: str

    @classmethod
    def from_json(cls, data: dict) -> Preset:
        return cls(name=data["name"], title=data.get("title", ""), artist=data.get("artist", ""),
                   year=data.get("year"), licence=data.get("licence", ""))


@dataclass(frozen=True)
class StyleEvent:
    """One server-sent event of a job's stream: `event` is status, progress or shutdown; `data` its JSON."""

    event: str
    data: Dict[str, Any]
    id: Optional[str] = None


@dataclass
class WaitReport:
    """How the last wait() followed its job: event-stream connections, reconnects after a drop, polls, and why it
    fell back to polling (None if it never did)."""

    stream_connections: int = 0
    reconnects: int = 0
    events: int = 0
    polls: int = 0
    fallback_reason: Optional[str] = None
    last_event_id: Optional[str] = None


@dataclass(frozen=True)
class RetryEvent:
    """Handed to `on_retry` before the client waits and sends a request again."""

    method: str
    url: str
    status_code: int
    attempt: int  # the attempt that was refused, 1-based
    delay_s: float  # how long the client waits now
    retry_after_s: Optional[float]  # the server's Retry-After, when it sent one
    detail: str
