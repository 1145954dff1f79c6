"""Retries of refused requests: 429 (too many requests) and 503 (service unavailable), honouring Retry-After.

Every call is retried on those two statuses, submits of style jobs included: both are answers the server gives
*before* it accepts a job (a full queue, models loading, a job store that is down), so sending again cannot create
a second job. A lost connection or a timeout is never retried here (a submit might then have been accepted);
StyleJob.wait() has its own reconnection logic.
"""
from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from datetime import timezone
from typing import FrozenSet, Optional


@dataclass(frozen=True)
class RetryPolicy:
    """attempts: tries in all, the first included (1: never retry). The wait before a retry is the server's
    Retry-After when it sends one, else backoff_s x 2^n capped at max_backoff_s. A Retry-After longer than
    max_wait_s is not waited for: the error is raised at once (its `retry_after` says when to come back)."""

    attempts: int = 4
    statuses: FrozenSet[int] = frozenset({429, 503})
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_wait_s: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1 (1: no retries)")

    @classmethod
    def never(cls) -> RetryPolicy:
        return cls(attempts=1)

    @classmethod
    def of(cls, retries: int | RetryPolicy | None) -> RetryPolicy:
        """retries=None: the default policy; an int: that many retries; a RetryPolicy as it is."""
        if retries is None:
            return cls()
        if isinstance(retries, RetryPolicy):
            return retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError("retries must be a number of retries (0 or more) or a RetryPolicy")
        return cls(attempts=retries + 1)

    def delay(self, status_code: int, attempt: int, retry_after: Optional[float]) -> Optional[float]:
        """Seconds to wait before attempt `attempt + 1`, or None to give up and raise."""
        if status_code not in self.statuses or attempt >= self.attempts:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.max_wait_s else None
        return min(self.max_backoff_s, self.backoff_s * (2 ** (attempt - 1)))


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Retry-After as seconds: delta-seconds ("120") or an HTTP date; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)
