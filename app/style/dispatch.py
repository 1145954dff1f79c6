"""Dramatiq on Redis: how style jobs travel from the API replicas to the worker hosts (JOB_BACKEND=redis).

A message carries only a job id; the record and files are in the job store (app/style/redis_store.py). Dramatiq
gives at-least-once delivery: a message is acknowledged only after its job ends, and the messages of a worker whose
broker heartbeat stops are put back on the queue by the other workers. The job store makes a second delivery of
the same job harmless, so both Dramatiq's redelivery and the janitor's re-send can bring a job back.
"""
from __future__ import annotations

from typing import Callable

import dramatiq
from dramatiq.brokers.redis import MAINTENANCE_SCALE, RedisBroker

from app.core.config import Settings
from app.style.redis_store import RedisJobStore, connect

QUEUE_NAME = "style"
ACTOR_NAME = "run_style_job"


def make_broker(settings: Settings) -> RedisBroker:
    return RedisBroker(
        client=connect(settings.redis_url),
        namespace=f"{settings.redis_namespace}:dramatiq",
        heartbeat_timeout=int(settings.job_heartbeat_timeout_s * 1000),
        # Look for dead workers' messages at every fetch, not at 0.1 % of them (the default): with a handful of
        # workers it is one cheap script call, and a killed worker's job comes back within the heartbeat timeout.
        maintenance_chance=MAINTENANCE_SCALE,
        middleware=[],  # no time limit, no automatic retries: the job store decides what runs again
    )


def sender(broker: RedisBroker) -> Callable[[str], None]:
    """dispatch(job_id): one message on the style queue."""
    broker.declare_queue(QUEUE_NAME)

    def dispatch(job_id: str) -> None:
        broker.enqueue(dramatiq.Message(queue_name=QUEUE_NAME, actor_name=ACTOR_NAME, args=(job_id,), kwargs={},
                                        options={}))

    return dispatch


def declare_actor(broker: RedisBroker, handle: Callable[[str], None]) -> dramatiq.Actor:
    """The worker side: `handle(job_id)` runs for each message on the style queue."""
    return dramatiq.Actor(handle, broker=broker, actor_name=ACTOR_NAME, queue_name=QUEUE_NAME, priority=0,
                          options={})


def redis_store(settings: Settings, broker: RedisBroker) -> RedisJobStore:
    return RedisJobStore(
        connect(settings.redis_url), sender(broker), namespace=settings.redis_namespace,
        max_attempts=settings.job_max_attempts, heartbeat_timeout_s=settings.job_heartbeat_timeout_s,
        result_ttl_s=settings.result_ttl, result_max_bytes=settings.style_result_max_bytes)
