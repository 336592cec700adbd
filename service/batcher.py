"""Micro-batcher: groups concurrent requests into one predictor call.

Requests put ``(item, future)`` on a bounded asyncio queue. One worker takes the first waiting
item and keeps collecting until it has ``max_size`` items or ``max_wait_s`` has passed since the
first, runs the batch function in a thread (so the event loop keeps serving), and resolves each
future with its result. It does not wait for company that is not coming: when nothing is queued
and the optional ``incoming`` callable says no item is on its way (for the service: an image
still being decoded), the batch runs at once, so a lone request at low load pays no
``max_wait_s``; without ``incoming``, a lone item runs at once and a started batch waits out
``max_wait_s``. A full queue refuses new items at once (:class:`QueueFullError`, HTTP 503 +
Retry-After), so memory stays bounded under overload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from service.metrics import ServiceMetrics

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class QueueFullError(RuntimeError):
    """The work queue is full; the caller should retry later."""


class BatcherClosedError(RuntimeError):
    """The batcher is not running (the service is shutting down)."""


@dataclass
class _Job(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher(Generic[T, R]):
    """Collects items into batches for ``run_batch`` (called in ``executor``)."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[T]], Sequence[R]],
        *,
        max_size: int,
        max_wait_s: float,
        queue_max: int,
        metrics: ServiceMetrics | None = None,
        executor: Executor | None = None,
        incoming: Callable[[], int] | None = None,
    ) -> None:
        """``incoming`` returns how many items are on their way to :meth:`submit` (for the
        service: requests whose image is still being decoded); see the module docstring."""
        if max_size < 1 or queue_max < 1 or max_wait_s < 0:
            raise ValueError("max_size and queue_max must be >= 1 and max_wait_s >= 0")
        self._run_batch = run_batch
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self._queue: asyncio.Queue[_Job[T, R]] = asyncio.Queue(maxsize=queue_max)
        self._metrics = metrics
        self._executor = executor
        self._incoming = incoming
        self._worker: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        """Items waiting now."""
        return self._queue.qsize()

    def start(self) -> None:
        """Start the worker task on the running loop."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(
                self._work(), name="micro-batcher"
            )

    async def close(self) -> None:
        """Stop the worker; items still queued fail with :class:`BatcherClosedError`."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(BatcherClosedError("the service is shutting down"))

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait for its result; raises :class:`QueueFullError` when full."""
        if self._worker is None:
            raise BatcherClosedError("the micro-batcher is not running")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Job(item, future))
        except asyncio.QueueFull:
            raise QueueFullError(
                f"the work queue is full ({self._queue.maxsize} images waiting)"
            ) from None
        self._observe_depth()
        return await future

    def _observe_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_depth.set(self._queue.qsize())

    async def _collect(self) -> list[_Job[T, R]]:
        first = await self._queue.get()
        batch = [first]
        deadline = time.perf_counter() + self.max_wait_s
        waited = False
        while len(batch) < self.max_size:
            # Take whatever is already waiting without sleeping.
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            if not waited:
                # One yield lets requests that arrived in the same loop tick join.
                waited = True
                await asyncio.sleep(0)
                if not self._queue.empty():
                    continue
            if self._nobody_coming(len(batch)):
                break
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        self._observe_depth()
        return batch

    def _nobody_coming(self, collected: int) -> bool:
        """True when waiting longer for this batch is pointless: nothing is on its way. Without
        an ``incoming`` signal, only a lone item is run at once (under load, items queue up
        while the previous batch runs, so batches still form)."""
        if self._incoming is None:
            return collected == 1
        return self._incoming() <= 0

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [job for job in batch if not job.future.done()]  # skip cancelled callers
            if not live:
                continue
            started = time.perf_counter()
            if self._metrics is not None:
                self._metrics.batch_size.observe(len(live))
                for job in live:
                    self._metrics.queue_wait_seconds.observe(started - job.enqueued)
            try:
                results = await loop.run_in_executor(
                    self._executor, self._run_batch, [job.item for job in live]
                )
            except asyncio.CancelledError:
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(BatcherClosedError("the service is stopping"))
                raise
            except Exception as exc:  # the batch failed: every caller gets the error
                logger.exception("micro-batch of %d failed", len(live))
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            finally:
                if self._metrics is not None:
                    self._metrics.inference_seconds.observe(time.perf_counter() - started)
            if len(results) != len(live):
                error = RuntimeError(f"batch of {len(live)} gave {len(results)} results")
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            for job, result in zip(live, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)
