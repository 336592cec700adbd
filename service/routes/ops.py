"""Operations: ``/healthz``, ``/readyz``, ``/metrics`` and ``/v1/me``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from service.database import ping
from service.deps import ContextDep, Reader
from service.problems import ProblemError

router = APIRouter()

READY_MIN_FREE_BYTES = 64 * 1024 * 1024
"""Below this much free disk under the image store, ``/readyz`` says not ready."""


@router.get("/healthz", tags=["operations"], summary="The process is alive")
def healthz() -> dict[str, str]:
    """Always ``ok`` while the process serves requests."""
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"], summary="A model is loaded and the database answers")
async def readyz(context: ContextDep) -> dict[str, Any]:
    """``ready`` with the model version, or 503 naming what is missing."""
    predictor = context.host.current
    database_ok = await run_in_threadpool(ping, context.engine)
    store_problem = await run_in_threadpool(context.store.unwritable_reason, READY_MIN_FREE_BYTES)
    if predictor is None or not database_ok or store_problem:
        missing = [
            what
            for what, ok in (
                ("a loaded model", predictor is not None),
                ("the database", database_ok),
            )
            if not ok
        ]
        reasons = ["waiting for " + " and ".join(missing)] if missing else []
        reasons += [store_problem] if store_problem else []
        raise ProblemError(
            503,
            "not-ready",
            "Not ready: " + "; ".join(reasons) + ".",
            title="Not ready",
            headers={"Retry-After": "2"},
        )
    return {
        "status": "ready",
        "model_version": predictor.version,
        "database": "ok",
        "image_store": "writable",
    }


@router.get(
    "/metrics",
    tags=["operations"],
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
def metrics(context: ContextDep) -> Response:
    """The Prometheus text exposition of this service."""
    return Response(context.metrics.render(), media_type=context.metrics.content_type)


@router.get("/v1/me", tags=["auth"], summary="Who the API key belongs to")
def me(principal: Reader) -> dict[str, Any]:
    """The caller's key id, name and role (the web page signs in with it)."""
    return {"key_id": principal.key_id, "name": principal.name, "role": principal.role.value}
