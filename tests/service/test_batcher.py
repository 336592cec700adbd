"""The micro-batcher (service/batcher.py): grouping, waiting, back-pressure, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from service.batcher import BatcherClosedError, MicroBatcher, QueueFullError
from service.metrics import ServiceMetrics


def test_batcher_groups_concurrent_items_and_keeps_order() -> None:
    seen: list[list[int]] = []

    def run(items: Sequence[int]) -> list[int]:
        seen.append(list(items))
        time.sleep(0.01)
        return [i * 10 for i in items]

    metrics = ServiceMetrics()

    async def main() -> list[int]:
        batcher: MicroBatcher[int, int] = MicroBatcher(
            run, max_size=8, max_wait_s=0.05, queue_max=64, metrics=metrics
        )
        batcher.start()
        try:
            return list(await asyncio.gather(*(batcher.submit(i) for i in range(20))))
        finally:
            await batcher.close()

    results = asyncio.run(main())
    assert results == [i * 10 for i in range(20)]
    assert max(len(b) for b in seen) == 8
    assert len(seen) == 3  # 8 + 8 + 4
    text = metrics.render().decode()
    assert "cites_batch_size_count 3.0" in text
    assert "cites_batch_size_sum 20.0" in text


def test_batcher_waits_at_most_max_wait_for_a_lone_item() -> None:
    def run(items: Sequence[int]) -> list[int]:
        return list(items)

    async def main() -> float:
        batcher: MicroBatcher[int, int] = MicroBatcher(
            run, max_size=32, max_wait_s=0.03, queue_max=64
        )
        batcher.start()
        started = time.perf_counter()
        await batcher.submit(1)
        elapsed = time.perf_counter() - started
        await batcher.close()
        return elapsed

    assert asyncio.run(main()) < 0.5


def test_batcher_runs_a_lone_item_without_waiting_max_wait() -> None:
    """Nothing else queued: the item runs at once instead of waiting 500 ms for company."""

    def run(items: Sequence[int]) -> list[int]:
        return list(items)

    async def main() -> list[float]:
        batcher: MicroBatcher[int, int] = MicroBatcher(
            run, max_size=32, max_wait_s=0.5, queue_max=64
        )
        batcher.start()
        elapsed = []
        try:
            for i in range(3):
                started = time.perf_counter()
                assert await batcher.submit(i) == i
                elapsed.append(time.perf_counter() - started)
        finally:
            await batcher.close()
        return elapsed

    assert max(asyncio.run(main())) < 0.25


def test_batcher_still_groups_items_queued_behind_a_running_batch() -> None:
    seen: list[list[int]] = []

    def run(items: Sequence[int]) -> list[int]:
        seen.append(list(items))
        time.sleep(0.1)
        return list(items)

    async def main() -> list[int]:
        batcher: MicroBatcher[int, int] = MicroBatcher(
            run, max_size=8, max_wait_s=0.5, queue_max=64
        )
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit(0))
            await asyncio.sleep(0.03)  # the lone first item is running now
            rest = [batcher.submit(i) for i in range(1, 6)]
            return list(await asyncio.gather(first, *rest))
        finally:
            await batcher.close()

    assert asyncio.run(main()) == list(range(6))
    assert seen == [[0], [1, 2, 3, 4, 5]]


def test_batcher_waits_for_announced_items_and_not_for_absent_ones() -> None:
    """With an ``incoming`` signal the batch waits for items on their way (here: one arriving
    50 ms later) and runs at once when none are, even with max_wait at 2 s."""
    seen: list[list[int]] = []
    coming = [0]

    def run(items: Sequence[int]) -> list[int]:
        seen.append(list(items))
        return list(items)

    async def main() -> tuple[list[int], float]:
        batcher: MicroBatcher[int, int] = MicroBatcher(
            run, max_size=8, max_wait_s=2.0, queue_max=64, incoming=lambda: coming[0]
        )
        batcher.start()

        async def late(item: int) -> int:
            await asyncio.sleep(0.05)
            coming[0] -= 1
            return await batcher.submit(item)

        try:
            coming[0] = 1  # item 1 is "decoding" while item 0 reaches the batcher
            joined = list(await asyncio.gather(batcher.submit(0), late(1)))
            started = time.perf_counter()
            pair = await asyncio.gather(batcher.submit(2), batcher.submit(3))
            assert list(pair) == [2, 3]
            return joined, time.perf_counter() - started
        finally:
            await batcher.close()

    joined, elapsed = asyncio.run(main())
    assert joined == [0, 1]
    assert seen == [[0, 1], [2, 3]]
    assert elapsed < 1.0  # nobody announced: no 2 s wait for a third item


def test_batcher_refuses_when_full_and_fails_callers_on_errors() -> None:
    gate = threading.Event()

    def run(items: Sequence[int]) -> list[int]:
        gate.wait(5)
        if -1 in items:
            raise RuntimeError("boom")
        return list(items)

    async def main() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher(run, max_size=1, max_wait_s=0.0, queue_max=2)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(0))  # taken by the worker, blocks
        await asyncio.sleep(0.05)
        queued = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError):
            await batcher.submit(3)
        gate.set()
        assert await first == 0
        assert [await q for q in queued] == [1, 2]
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit(-1)
        assert await batcher.submit(5) == 5  # the worker survived the failed batch
        await batcher.close()
        with pytest.raises(BatcherClosedError):
            await batcher.submit(6)

    asyncio.run(main())


def test_batcher_skips_cancelled_callers() -> None:
    ran: list[list[int]] = []

    def run(items: Sequence[int]) -> list[int]:
        ran.append(list(items))
        return list(items)

    async def main() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher(
            run, max_size=4, max_wait_s=0.05, queue_max=8
        )
        batcher.start()
        doomed = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0)
        doomed.cancel()
        assert await batcher.submit(2) == 2
        await batcher.close()

    asyncio.run(main())
    assert [1] not in ran and all(1 not in batch for batch in ran)
