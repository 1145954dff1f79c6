"""The style jobs' Prometheus metrics, registered in the app's registry by app.style.install: queue depth, running
jobs and live workers (read at scrape time), and the outcomes and run times of finished jobs (read from the job
store at each scrape: jobs finished since the last one, each counted once)."""
from __future__ import annotations

import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from app.style.jobs import QUEUED, RUNNING, JobStoreUnavailable

JOB_DURATION_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
JOB_LOOKBACK_S = 60.0  # jobs committed late (finished_at before the last scrape) are still counted once


class StyleMetrics:
    """A collector: `collect()` runs in the scrape's thread (it may wait on SQLite or Redis)."""

    def __init__(self, registry: CollectorRegistry, service_of):
        self.service_of = service_of  # () -> the style service, or None before startup
        self.job_duration = Histogram("style_job_duration_seconds", "Run time of finished style jobs (started "
                                      "to finished)", buckets=JOB_DURATION_BUCKETS, registry=None)
        self.job_outcomes = Counter("style_jobs_finished", "Style jobs finished, by final status", ["status"],
                                    registry=None)
        self._jobs_since = time.time()
        self._jobs_seen: dict[str, float] = {}  # id -> finished_at of jobs already counted (lookback window)
        self._lock = threading.Lock()  # concurrent scrapes run in different threads
        registry.register(self)

    def describe(self):
        return []

    def collect(self):
        service = self.service_of()
        if service is not None:
            self.sync_jobs(service.store)
        yield from self.job_duration.collect()
        yield from self.job_outcomes.collect()
        if service is not None:
            try:
                yield from list(_gauges(service))
            except JobStoreUnavailable:  # Redis down: the scrape still answers, without the style gauges
                pass

    def sync_jobs(self, store: Any) -> None:
        """Count the jobs that finished since the last scrape."""
        with self._lock:
            try:
                self._sync_jobs(store)
            except JobStoreUnavailable:  # counted at a later scrape
                pass

    def _sync_jobs(self, store: Any) -> None:
        since = self._jobs_since - JOB_LOOKBACK_S
        latest = self._jobs_since
        for job_id, status, started_at, finished_at in store.finished_since(since):
            if job_id in self._jobs_seen:
                continue
            self._jobs_seen[job_id] = finished_at
            latest = max(latest, finished_at)
            self.job_outcomes.labels(status).inc()
            if started_at is not None:
                self.job_duration.observe(max(0.0, finished_at - started_at))
        self._jobs_since = max(self._jobs_since, min(latest, time.time()))
        cutoff = self._jobs_since - JOB_LOOKBACK_S
        self._jobs_seen = {k: v for k, v in self._jobs_seen.items() if v >= cutoff}


def _gauges(service: Any):
    store = service.store
    queued = GaugeMetricFamily("style_queue_depth", "Style jobs waiting for a worker")
    queued.add_metric([], float(store.count(QUEUED)))
    yield queued
    running = GaugeMetricFamily("style_jobs_running", "Style jobs being run by a worker")
    running.add_metric([], float(store.count(RUNNING)))
    yield running
    workers = GaugeMetricFamily("style_workers_alive", "Style worker processes alive")
    workers.add_metric([], float(sum(1 for w in service.workers if w["alive"])))
    yield workers
