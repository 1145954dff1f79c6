"""Server-sent events parsing and the text progress bar of StyleJob.wait(progress=True)."""
from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable, List, Optional, TextIO, Union

from model_server_client.datatypes import JobInfo, StyleEvent


class SSEParser:
    """The event-stream format (WHATWG HTML, "server-sent events"), fed one line at a time: `event:`, `data:`
    (joined with newlines), `id:` (kept as the last event id, sent back as Last-Event-ID on reconnection),
    `retry:` (the reconnection delay in ms), comments (`: keep-alive`) ignored, a blank line dispatches."""

    def __init__(self, last_event_id: Optional[str] = None):
        self.last_event_id = last_event_id
        self.retry_ms: Optional[int] = None
        self._event = ""
        self._data: List[str] = []

    def feed(self, line: str) -> Optional[StyleEvent]:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value or None
        elif name == "retry":
            if value.isdigit():
                self.retry_ms = int(value)
        return None

    def _dispatch(self) -> Optional[StyleEvent]:
        event, data = self._event or "message", self._data
        self._event, self._data = "", []
        if not data:
            return None
        text = "\n".join(data)
        try:
            payload = json.loads(text)
        except ValueError:
            payload = {"text": text}
        if not isinstance(payload, dict):
            payload = {"value": payload}
        return StyleEvent(event, payload, self.last_event_id)


def duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressBar:
    """One line on a text stream (stderr by default): redrawn in place on a terminal; on a pipe or a file, a line
    when the status changes and at every tenth of the steps, so logs stay short."""

    def __init__(self, stream: Optional[TextIO] = None, width: int = 28, label: str = "style"):
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.label = label
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self._last_line = ""
        self._last_status: Optional[str] = None
        self._last_tenth = -1
        self._drawn = False
        self._last_draw = 0.0

    def line(self, job: JobInfo) -> str:
        p = job.progress
        fraction = min(1.0, max(0.0, p.fraction if p.total else 0.0))
        filled = int(round(fraction * self.width))
        bar = "#" * filled + "-" * (self.width - filled)
        text = f"{self.label} [{bar}] {fraction * 100:3.0f}%"
        if p.total:
            text += f" step {p.step}/{p.total}"
        if job.status == "queued":
            where = f" (position {job.queue_position})" if job.queue_position else ""
            text += f" queued{where}"
        elif job.status != "running":
            text += f" {job.status}"
        if job.eta_s is not None and not job.finished:
            text += f", ~{duration(job.eta_s)} left"
        return text

    def update(self, job: JobInfo) -> None:
        text = self.line(job)
        if self.tty:
            now = time.monotonic()
            if text == self._last_line or (now - self._last_draw < 0.05 and not job.finished):
                return
            pad = " " * max(0, len(self._last_line) - len(text))
            self.stream.write("\r" + text + pad)
            self._last_draw = now
            self._drawn = True
        else:
            tenth = int(job.progress.fraction * 10) if job.progress.total else 0
            if job.status == self._last_status and tenth == self._last_tenth:
                return
            self._last_status, self._last_tenth = job.status, tenth
            self.stream.write(text + "\n")
        self._last_line = text
        self.stream.flush()

    def note(self, message: str) -> None:
        """A message about the connection (a dropped stream, polling), on its own line."""
        if self.tty and self._drawn:
            self.stream.write("\n")
            self._drawn = False
            self._last_line = ""
        self.stream.write(f"{self.label}: {message}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


ProgressArg = Union[bool, None, ProgressBar, Callable[[JobInfo], Any]]


class _Reporter:
    """What wait() reports to: nothing, a ProgressBar, or a callable taking each JobInfo."""

    def __init__(self, progress: ProgressArg, label: str):
        self.bar: Optional[ProgressBar] = None
        self.callback: Optional[Callable[[JobInfo], Any]] = None
        if progress is True:
            self.bar = ProgressBar(label=label)
        elif isinstance(progress, ProgressBar):
            self.bar = progress
        elif callable(progress):
            self.callback = progress
        elif progress not in (None, False):
            raise TypeError("progress must be True/False, a ProgressBar or a callable taking a JobInfo")

    def update(self, job: JobInfo) -> None:
        if self.bar is not None:
            self.bar.update(job)
        if self.callback is not None:
            self.callback(job)

    def note(self, message: str) -> None:
        if self.bar is not None:
            self.bar.note(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
