"""Dynamic batching: concurrent inputs of one model share a forward pass.

One collector task per model takes the first queued item and, if others are already waiting,
keeps gathering until `max_size` items or `max_wait_ms` after the first one arrived. The forward
pass runs in the model's own single-thread executor, so the event loop never blocks and a model
runs one batch at a time; whatever arrives meanwhile forms the next batch.
"""
import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from app.core.errors import ServiceUnavailable

logger = logging.getLogger(__name__)

PredictFn = Callable[[list[Any]], Sequence[Any]]


@dataclass
class BatcherStats:
    forward_passes: int = 0
    items: int = 0
    failed_batches: int = 0
    batch_sizes: Counter = field(default_factory=Counter)

    @property
    def mean_batch_size(self) -> float:
        return self.items / self.forward_passes if self.forward_passes else 0.0


@dataclass
class _Pending:
    item: Any
    future: asyncio.Future
    arrived_at: float


class DynamicBatcher:
    def __init__(self, predict_fn: PredictFn, max_size: int = 32, max_wait_ms: float = 2.0, name: str = "model"):
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.predict_fn = predict_fn
        self.max_size = max_size
        self.max_wait = max_wait_ms / 1000
        self.name = name
        self.stats = BatcherStats()
        self._queue: deque[_Pending] = deque()
        self._in_flight: list[_Pending] = []
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the collector on the running event loop."""
        if self.running:
            return
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"predict-{self.name}")
        self._task = asyncio.create_task(self._collect_forever(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Cancel the collector and fail every queued or in-flight item with ServiceUnavailable."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        for pending in [*self._in_flight, *self._queue]:
            _fail(pending.future, ServiceUnavailable(f"model '{self.name}' is shutting down; retry shortly"))
        self._in_flight, self._queue = [], deque()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def submit(self, item: Any) -> Any:
        """Queue one input; returns its row of predict_fn's output or raises the error it caused."""
        if not self.running:
            raise ServiceUnavailable(f"model '{self.name}' is not running")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append(_Pending(item, future, loop.time()))
        self._arrived.set()
        return await future

    async def _collect_forever(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            self._in_flight = batch  # left set on cancellation, for stop() to fail
            try:
                await self._run(batch)
            except Exception:  # a bug here must not kill the collector and hang every later request
                logger.exception("batcher %s: unexpected error", self.name)
                for pending in batch:
                    _fail(pending.future, ServiceUnavailable(f"model '{self.name}' failed; retry shortly"))
            self._in_flight = []

    async def _next_batch(self) -> list[_Pending]:
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        # Yield once so submits scheduled in the same loop iteration can join; a lone request
        # pays only this, never max_wait.
        await asyncio.sleep(0)
        if 1 < len(self._queue) < self.max_size:
            await self._fill_until_deadline()
        return self._take()

    async def _fill_until_deadline(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = self._queue[0].arrived_at + self.max_wait
        while len(self._queue) < self.max_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Pending]:
        batch = []
        while self._queue and len(batch) < self.max_size:
            pending = self._queue.popleft()
            if not pending.future.done():  # skip callers that gave up (disconnected, cancelled)
                batch.append(pending)
        return batch

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            rows = await self._forward([pending.item for pending in batch])
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch[0].future, exc)
                return
            # Retry alone so one bad input fails only its own caller.
            self.stats.failed_batches += 1
            logger.warning("batcher %s: batch of %d failed (%s); retrying items one by one", self.name, len(batch), exc)
            for pending in batch:
                await self._run([pending])
            return
        for pending, row in zip(batch, rows):
            if not pending.future.done():
                pending.future.set_result(row)

    async def _forward(self, items: list[Any]) -> Sequence[Any]:
        self.stats.forward_passes += 1
        self.stats.items += len(items)
        self.stats.batch_sizes[len(items)] += 1
        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(self._executor, self.predict_fn, items)
        if len(rows) != len(items):
            raise RuntimeError(f"predict returned {len(rows)} rows for a batch of {len(items)}")
        return rows


def _fail(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
