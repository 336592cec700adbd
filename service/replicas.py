"""Replicas follow the active model version recorded in the shared database.

Several service processes may share one database (PostgreSQL) and one image folder. An
activation or rollback through any of them persists the active bundle folder of its modality
(``service_state``, see :mod:`service.activations`); every process polls those values (camera
and x-ray) every ``replica_poll_s`` seconds (default 1 s) and, when one differs from what it
serves for that modality, loads, verifies and swaps in that bundle from its own weights folder,
exactly as an activation through its API would. So an activation is served by every replica
within about ``replica_poll_s`` plus the load time.

Why a poll and not PostgreSQL ``LISTEN/NOTIFY``: it works the same on SQLite (one machine) and
PostgreSQL, needs no dedicated connection per process, and cannot miss a notification sent while
a replica was restarting or its connection dropped; one indexed primary-key read per second per
replica is negligible.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from model.vocabulary import MODALITIES
from service.modelhost import (
    ModalityMismatchError,
    ModelHost,
    ModelLoadError,
    ModelNotFoundError,
)
from service.repository import active_model_key, get_state

logger = logging.getLogger(__name__)


class ActiveVersionFollower:
    """Polls the persisted active folder and activates it when this process serves another."""

    def __init__(
        self,
        host: ModelHost,
        sessions: Callable[[], Any],
        interval_s: float,
        on_swap: Callable[[str], None] | None = None,
    ) -> None:
        self._host = host
        self._sessions = sessions
        self._interval_s = interval_s
        self._on_swap = on_swap
        self._task: asyncio.Task[None] | None = None
        self._failed: dict[str, str] = {}

    def start(self) -> None:
        """Start polling (no-op when the interval is 0)."""
        if self._interval_s > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(), name="active-version-follower")

    async def close(self) -> None:
        """Stop polling."""
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _wanted(self) -> dict[str, str | None]:
        with self._sessions() as session:
            return {m: get_state(session, active_model_key(m)) for m in MODALITIES}

    async def check_once(self) -> bool:
        """Activate each modality's persisted folder where this process serves another; True
        when it swapped any."""
        loop = asyncio.get_running_loop()
        try:
            wanted = await loop.run_in_executor(None, self._wanted)
        except SQLAlchemyError as exc:
            logger.warning("replica: cannot read the active model versions: %s", exc)
            return False
        swapped = False
        for modality, folder in wanted.items():
            swapped = await self._follow(modality, folder) or swapped
        return swapped

    async def _follow(self, modality: str, wanted: str | None) -> bool:
        current = self._host.current_for(modality)
        if not wanted or self._host.swapping or wanted == self._failed.get(modality):
            return False
        if current is not None and current.bundle.path.name == wanted:
            self._failed.pop(modality, None)
            return False
        try:
            predictor, _slots = await self._host.activate(wanted, modality=modality)
        except (ModelNotFoundError, ModelLoadError, ModalityMismatchError) as exc:
            self._failed[modality] = wanted  # log once; try again when the value changes
            logger.error(
                "replica: cannot follow the %s activation of %s: %s", modality, wanted, exc
            )
            return False
        logger.info(
            "replica: now serving %s for %s (activated elsewhere)", predictor.version, modality
        )
        if self._on_swap is not None and modality == "camera":
            self._on_swap(predictor.version)
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.check_once()
            except Exception:  # never let the poller die: log and keep following
                logger.exception("replica: active-version check failed")
