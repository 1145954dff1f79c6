"""DynamicBatcher with plain Python predict functions (no model needed)."""
import asyncio
import threading
import time

import pytest

from app.serving.batcher import DynamicBatcher
from app.core.errors import ServiceUnavailable


class Doubler:
    """predict_fn that doubles numbers, records each batch, optionally sleeps and rejects negatives."""

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        if any(item < 0 for item in items):
            raise ValueError(f"negative input in {items}")
        return [2 * item for item in items]


async def with_batcher(predict_fn, test, **kwargs):
    batcher = DynamicBatcher(predict_fn, name="test", **{"max_size": 32, "max_wait_ms": 5.0, **kwargs})
    batcher.start()
    try:
        return await test(batcher)
    finally:
        await batcher.stop()


def run(predict_fn, test, **kwargs):
    return asyncio.run(asyncio.wait_for(with_batcher(predict_fn, test, **kwargs), timeout=20))


def test_concurrent_submits_share_forward_passes():
    doubler = Doubler()

    async def test(batcher):
        return await asyncio.gather(*(batcher.submit(i) for i in range(20)))

    results = run(doubler, test)
    assert results == [2 * i for i in range(20)]
    assert len(doubler.batches) < 20
    assert sum(len(b) for b in doubler.batches) == 20


def test_items_arriving_during_a_slow_pass_form_the_next_batch():
    doubler = Doubler(delay_s=0.2)

    async def test(batcher):
        first = asyncio.create_task(batcher.submit(100))
        await asyncio.sleep(0.05)  # the first pass is now running
        later = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        return await first, later, batcher.stats

    first, later, stats = run(doubler, test)
    assert first == 200 and later == [2 * i for i in range(10)]
    assert doubler.batches == [[100], list(range(10))]
    assert stats.forward_passes == 2 and stats.batch_sizes == {1: 1, 10: 1}


def test_order_is_preserved_across_staggered_submits():
    doubler = Doubler(delay_s=0.01)

    async def test(batcher):
        async def submit_later(i):
            await asyncio.sleep((i % 7) * 0.003)
            return i, await batcher.submit(i)

        return await asyncio.gather(*(submit_later(i) for i in range(50)))

    for item, result in run(doubler, test, max_size=8):
        assert result == 2 * item
    assert max(len(batch) for batch in doubler.batches) <= 8


def test_one_bad_input_fails_alone():
    doubler = Doubler()

    async def test(batcher):
        return await asyncio.gather(*(batcher.submit(i) for i in [1, 2, -3, 4, 5]), return_exceptions=True)

    results = run(doubler, test)
    assert results[:2] == [2, 4] and results[3:] == [8, 10]
    assert isinstance(results[2], ValueError)
    assert doubler.batches[0] == [1, 2, -3, 4, 5]  # the failed batch, then each item alone
    assert [b for b in doubler.batches[1:]] == [[1], [2], [-3], [4], [5]]


def test_max_size_one_turns_batching_off():
    doubler = Doubler()

    async def test(batcher):
        return await asyncio.gather(*(batcher.submit(i) for i in range(6))), batcher.stats

    results, stats = run(doubler, test, max_size=1)
    assert results == [2 * i for i in range(6)]
    assert doubler.batches == [[i] for i in range(6)]
    assert stats.forward_passes == 6 and stats.batch_sizes == {1: 6}


def test_a_lone_submit_does_not_wait_for_max_wait():
    doubler = Doubler()

    async def test(batcher):
        await batcher.submit(0)  # warm the executor thread
        started = time.perf_counter()
        result = await batcher.submit(21)
        return result, time.perf_counter() - started

    result, elapsed = run(doubler, test, max_wait_ms=200)
    assert result == 42
    assert elapsed < 0.05


def test_concurrent_submits_wait_at_most_max_wait():
    doubler = Doubler()

    async def test(batcher):
        started = time.perf_counter()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(3)))
        return results, time.perf_counter() - started

    results, elapsed = run(doubler, test, max_wait_ms=100)
    assert results == [0, 2, 4]
    assert doubler.batches == [[0, 1, 2]]
    assert elapsed < 1.0


def test_forward_runs_off_the_event_loop_in_one_thread_per_model():
    doubler = Doubler()

    async def test(batcher):
        for i in range(3):
            await batcher.submit(i)

    run(doubler, test)
    assert len(doubler.threads) == 1
    assert next(iter(doubler.threads)).startswith("predict-test")


def test_stop_fails_pending_items_and_later_submits():
    doubler = Doubler(delay_s=0.2)

    async def scenario():
        batcher = DynamicBatcher(doubler, max_size=4, max_wait_ms=1, name="test")
        batcher.start()
        pending = [asyncio.create_task(batcher.submit(i)) for i in range(6)]
        await asyncio.sleep(0.05)
        await batcher.stop()
        outcomes = await asyncio.gather(*pending, return_exceptions=True)
        with pytest.raises(ServiceUnavailable):
            await batcher.submit(1)
        return outcomes

    outcomes = asyncio.run(asyncio.wait_for(scenario(), timeout=20))
    assert all(isinstance(outcome, ServiceUnavailable) for outcome in outcomes)


def test_cancelled_caller_is_skipped():
    doubler = Doubler(delay_s=0.1)

    async def test(batcher):
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.02)
        gone = asyncio.create_task(batcher.submit(2))
        kept = asyncio.create_task(batcher.submit(3))
        await asyncio.sleep(0)
        gone.cancel()
        return await first, await kept

    assert run(doubler, test) == (2, 6)
    assert doubler.batches == [[1], [3]]
