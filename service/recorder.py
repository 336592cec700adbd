"""Group commit of identifications: every identification ready at the same time is written in
one database transaction.

Each identification needs an image row (if new) and its own row, durable before the answer is
sent. One transaction per request made the database's fsync the bottleneck under load (see
docs/benchmarks.md), so requests hand their rows to one writer. The writer is a
:class:`~service.batcher.MicroBatcher` that never waits for company: a lone row is written at
once, and rows that arrive while a commit is running go together in the next one (up to
``max_rows``). Every caller still returns only after its own rows are committed. If a group
fails, its rows are retried one transaction each, so one bad row fails only its own request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from service.batcher import MicroBatcher
from service.imagestore import PreparedImage
from service.keys import Principal
from service.metrics import ServiceMetrics
from service.repository import NewIdentification, add_identifications, insert_images_if_new

logger = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 64


@dataclass(frozen=True)
class PendingIdentification:
    """One identification and its image, ready to be committed."""

    image: PreparedImage
    image_path: str
    identification: NewIdentification
    ident_id: str
    created_at: datetime
    more_images: tuple[tuple[PreparedImage, str], ...] = ()
    """The other photos of a multi-view identification, with their stored paths."""


def pending_identification(
    result: dict[str, Any],
    image: PreparedImage,
    image_path: str,
    principal: Principal,
    created_at: datetime,
    views: Sequence[tuple[PreparedImage, str]] = (),
) -> PendingIdentification:
    """The rows of a rendered identification ``result`` (:func:`service.render.build_result`).
    ``views``: every photo of a multi-view identification with its stored path, in order (the
    first is ``image``); empty for a single photo."""
    decision = result["decision"]
    return PendingIdentification(
        image=image,
        image_path=image_path,
        more_images=tuple(views[1:]),
        identification=NewIdentification(
            principal=principal,
            image_sha256=image.sha256,
            model_version=result["model_version"],
            modality=result["modality"],
            origin_country=result["origin_country"],
            case_ref=result["case_ref"],
            decision_kind=decision["kind"],
            label=decision["label"],
            taxon=(decision["taxon"] or {}).get("id"),
            probability=float(decision["probability"]),
            rule=decision["rule"],
            result=result,
            view_images=tuple(view.sha256 for view, _path in views),
        ),
        ident_id=result["id"],
        created_at=created_at,
    )


class IdentificationRecorder:
    """Writes identifications in group commits (see the module docstring)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        queue_max: int,
        max_rows: int = DEFAULT_MAX_ROWS,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self._sessions = sessions
        self._metrics = metrics
        self._writer: MicroBatcher[PendingIdentification, Exception | None] = MicroBatcher(
            self._write_group, max_size=max_rows, max_wait_s=0.0, queue_max=queue_max
        )
        self.commits = 0

    def start(self) -> None:
        """Start the writer task on the running loop."""
        self._writer.start()

    async def close(self) -> None:
        """Stop the writer (the service drains requests before this)."""
        await self._writer.close()

    async def record(self, pending: PendingIdentification) -> None:
        """Commit ``pending``; returns once it is durable, raises what its write raised (an
        ``OperationalError`` becomes the service's 503 database-unavailable problem).

        A caller cancelled meanwhile (request timeout, client gone) does not leave the row's
        fate open: the write goes on, and the cancellation is raised only once the row is
        committed or has failed, so that the caller's clean-up (which deletes the image file
        unless a row refers to it) sees the outcome."""
        job = asyncio.ensure_future(self._writer.submit(pending))
        try:
            error = await asyncio.shield(job)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await job
            raise
        if error is not None:
            raise error

    def _write_group(self, group: Sequence[PendingIdentification]) -> list[Exception | None]:
        """Runs in a worker thread: one transaction for ``group``, or one per row on failure."""
        try:
            self._commit(group)
            return [None] * len(group)
        except SQLAlchemyError as exc:
            if len(group) == 1:
                logger.error("could not store identification %s: %s", group[0].ident_id, exc)
                return [exc]
            logger.warning(
                "group commit of %d identifications failed; storing them one by one",
                len(group),
                exc_info=True,
            )
        outcomes: list[Exception | None] = []
        for pending in group:
            try:
                self._commit([pending])
                outcomes.append(None)
            except SQLAlchemyError as exc:
                logger.error("could not store identification %s: %s", pending.ident_id, exc)
                outcomes.append(exc)
        return outcomes

    def _commit(self, group: Sequence[PendingIdentification]) -> None:
        with self._sessions() as session:
            images = {
                image.sha256: (image, path)
                for p in group
                for image, path in ((p.image, p.image_path), *p.more_images)
            }
            insert_images_if_new(session, list(images.values()))
            add_identifications(
                session, [(p.identification, p.ident_id, p.created_at) for p in group]
            )
            session.commit()
        self.commits += 1
        if self._metrics is not None:
            self._metrics.commit_rows.observe(len(group))
