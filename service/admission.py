"""The admission stage: what may enter the identification path, and how much of it one client
may hold.

* the upload size limit (``CITES_MAX_UPLOAD_BYTES``, 413);
* images in progress in the whole service (``CITES_QUEUE_MAX``): beyond it a request is refused
  at once with 503 ``overloaded`` and ``Retry-After``, so memory and latency stay bounded;
* images in progress per client (API key, ``CITES_MAX_REQUESTS_PER_KEY``): beyond it 429
  ``too-many-requests`` with ``Retry-After``;
* decoders per client (``CITES_DECODE_SLOTS_PER_KEY``, default half of ``CITES_DECODE_WORKERS``):
  a client's further images wait for one of its own slots, so one client, however hostile its
  files, cannot hold every decoder while others wait. Heat maps take the same slots.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from service.metrics import ServiceMetrics
from service.problems import overloaded, too_many_requests, upload_too_large

logger = logging.getLogger(__name__)

ANONYMOUS_CLIENT = "anonymous"


@dataclass(frozen=True)
class AdmissionLimits:
    """The limits admission enforces (from the settings)."""

    max_upload_bytes: int
    max_in_progress: int
    max_per_key: int
    decode_slots_per_key: int


class Admission:
    """Counts images in progress, globally and per client; see the module docstring."""

    def __init__(self, limits: AdmissionLimits, metrics: ServiceMetrics) -> None:
        self.limits = limits
        self._metrics = metrics
        self._in_progress = 0
        self._per_key: dict[str, int] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}

    @property
    def in_progress(self) -> int:
        """Images admitted and not yet answered."""
        return self._in_progress

    def check_size(self, size: int | None) -> None:
        """413 when an upload of ``size`` bytes is over the limit."""
        limit = self.limits.max_upload_bytes
        if size is not None and size > limit:
            self._metrics.rejected.labels(reason="too_large").inc()
            raise upload_too_large(size, limit)

    @asynccontextmanager
    async def admit(self, client: str | None) -> AsyncIterator[None]:
        """Hold one place for an image of ``client`` (its key id) while it is in progress."""
        key = client or ANONYMOUS_CLIENT
        if self._in_progress >= self.limits.max_in_progress:
            self._metrics.rejected.labels(reason="overloaded").inc()
            raise overloaded(f"{self._in_progress} images in progress")
        held = self._per_key.get(key, 0)
        if held >= self.limits.max_per_key:
            self._metrics.rejected.labels(reason="per_key").inc()
            raise too_many_requests(f"{held} images in progress")
        self._in_progress += 1
        self._per_key[key] = held + 1
        try:
            yield
        finally:
            self._in_progress -= 1
            left = self._per_key[key] - 1
            if left:
                self._per_key[key] = left
            else:
                del self._per_key[key]
                semaphore = self._slots.get(key)
                if semaphore is not None and not semaphore.locked():
                    self._slots.pop(key, None)

    @asynccontextmanager
    async def decode_slot(self, client: str | None) -> AsyncIterator[None]:
        """Wait for one of ``client``'s decode slots and hold it (call inside :meth:`admit`)."""
        key = client or ANONYMOUS_CLIENT
        semaphore = self._slots.get(key)
        if semaphore is None:
            semaphore = asyncio.Semaphore(self.limits.decode_slots_per_key)
            self._slots[key] = semaphore
        async with semaphore:
            yield
