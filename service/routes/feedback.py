"""``/v1/feedback``: the export (confirmed labels as a training manifest plus images) and the
conflicts officers' disagreements leave for a trainer to resolve."""

from __future__ import annotations

import logging
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi import Path as Path_
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from service.deps import ContextDep, Exporter
from service.export import find_conflicts, resolve_conflict, write_export
from service.problems import ProblemError

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/feedback", tags=["feedback"])


@router.get(
    "/export",
    summary="Download feedback as a training archive (tar.gz)",
    response_class=FileResponse,
    responses={200: {"content": {"application/gzip": {}}}},
)
async def export_feedback(
    context: ContextDep,
    principal: Exporter,
    since: Annotated[datetime | None, Query(description="only feedback from this time")] = None,
) -> FileResponse:
    """``manifest.csv`` (path,label,modality,source,case_id) and ``images/`` in a tar.gz."""
    logger.info(
        "key %s (%s, %s) exports feedback since %s",
        principal.key_id,
        principal.name,
        principal.role.value,
        since.isoformat() if since else "the start",
    )
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    handle, name = tempfile.mkstemp(prefix="cites-export-", suffix=".tar.gz")
    os.close(handle)
    out = Path(name)

    def build() -> None:
        with context.sessions() as session:
            write_export(session, context.store, out, since=since)

    try:
        await run_in_threadpool(build)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return FileResponse(
        out,
        media_type="application/gzip",
        filename=f"feedback-{stamp}.tar.gz",
        background=BackgroundTask(out.unlink, missing_ok=True),
    )


class ResolutionIn(BaseModel):
    """A trainer's label for an image officers disagreed on."""

    label: str = Field(min_length=1, max_length=200, description="the label (or taxon id)")
    note: str | None = Field(default=None, max_length=2000)


@router.get("/conflicts", summary="Images officers disagree on (kept out of exports)")
async def list_conflicts(
    context: ContextDep,
    _principal: Exporter,
    since: Annotated[datetime | None, Query(description="only feedback from this time")] = None,
) -> dict[str, Any]:
    """Each image whose officers gave different labels and that no trainer has resolved."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)

    def build() -> list[dict[str, Any]]:
        with context.sessions() as session:
            return [c.to_dict() for c in find_conflicts(session, since)]

    return {"items": await run_in_threadpool(build)}


@router.post("/conflicts/{sha256}/resolve", summary="Settle a conflict with a trainer's label")
async def resolve(
    sha256: Annotated[str, Path_(pattern="^[0-9a-f]{64}$")],
    body: ResolutionIn,
    context: ContextDep,
    principal: Exporter,
) -> dict[str, Any]:
    """The image joins the next export once, with this label."""

    def store() -> None:
        with context.sessions() as session:
            resolve_conflict(
                session,
                sha256,
                body.label.strip(),
                by_key=principal.key_id,
                by_name=principal.name,
                note=body.note,
            )

    try:
        await run_in_threadpool(store)
    except LookupError as exc:
        raise ProblemError(404, "not-found", str(exc), title="Image not found") from None
    return {"sha256": sha256, "label": body.label.strip(), "resolved_by": principal.name}
