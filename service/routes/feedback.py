"""``/v1/feedback/export``: confirmed labels as a training manifest plus images."""

from __future__ import annotations

import logging
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from service.deps import ContextDep, Exporter
from service.export import write_export

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
