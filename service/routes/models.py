"""``/v1/models``: list bundles, show the active one, activate another or roll back (admin),
and the history of activations."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from model.predictor import Predictor
from service.activations import Change, history, record_change, rollback_target
from service.context import AppContext
from service.deps import Admin, ContextDep, Reader
from service.keys import Principal, Role
from service.modelhost import ModelLoadError, ModelNotFoundError, describe_predictor
from service.problems import ProblemError

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", summary="Bundles in the weights directory")
def list_models(context: ContextDep, principal: Reader) -> dict[str, Any]:
    """Every bundle version that can be activated, and which one is active. Server paths
    (``weights_dir``, each ``path``) are shown to admins only."""
    current = context.host.current
    admin = principal.role is Role.ADMIN
    items = [entry.to_dict() for entry in context.host.entries()]
    if not admin:
        for item in items:
            item.pop("path", None)
    body: dict[str, Any] = {"active": current.version if current is not None else None}
    if admin:
        body["weights_dir"] = str(context.host.weights_dir)
    body["items"] = items
    return body


@router.get("/active", summary="The serving model, its labels and thresholds")
def active_model(context: ContextDep, _principal: Reader) -> dict[str, Any]:
    """The active bundle (the web page offers its labels for corrections)."""
    current = context.host.current
    if current is None:
        raise ProblemError(
            503, "not-ready", "No model is loaded yet.", headers={"Retry-After": "2"}
        )
    return describe_predictor(current)


class ActivationRequest(BaseModel):
    """Optional body of an activation or rollback: why (recorded in the history)."""

    reason: str | None = Field(default=None, max_length=1000)


@router.get("/history", summary="Every activation and rollback, newest first")
def model_history(context: ContextDep, _principal: Reader) -> dict[str, Any]:
    """Who activated or rolled back which version, when, from which version, and why."""
    with context.sessions() as session:
        return {"items": history(session)}


async def _swap(
    context: AppContext, version: str, principal: Principal, action: str, reason: str | None
) -> dict[str, Any]:
    logger.info("key %s (%s): %s model %s", principal.key_id, principal.name, action, version)
    before = context.host.current

    def persist(predictor: Predictor) -> None:
        with context.sessions() as session:
            record_change(
                session,
                Change(
                    action=action,
                    actor_key_id=principal.key_id,
                    actor_name=principal.name,
                    from_version=before.version if before is not None else None,
                    from_folder=before.bundle.path.name if before is not None else None,
                    to_version=predictor.version,
                    to_folder=predictor.bundle.path.name,
                    reason=reason,
                ),
            )

    try:
        predictor = await context.host.activate(version, persist)
    except ModelNotFoundError as exc:
        raise ProblemError(404, "not-found", str(exc), title="Model not found") from None
    except ModelLoadError as exc:
        context.metrics.model_swaps.labels(outcome="failed").inc()
        logger.warning("activation of %s by key %s failed: %s", version, principal.key_id, exc)
        current = context.host.current
        still = current.version if current is not None else "none"
        raise ProblemError(
            409,
            "model-load-failed",
            f"{exc}. The model {still} keeps serving.",
            title="Model could not be activated",
        ) from None
    context.metrics.model_swaps.labels(outcome="activated").inc()
    logger.info("model %s activated by key %s", predictor.version, principal.key_id)
    serving = context.host.current or predictor  # after racing activations: the last swap
    context.metrics.set_active_model(serving.version)
    return describe_predictor(predictor)


@router.post("/{version}/activate", summary="Load, verify, warm up and swap in a bundle")
async def activate(
    version: str,
    context: ContextDep,
    principal: Admin,
    body: ActivationRequest | None = None,
) -> dict[str, Any]:
    """Swap the serving model; requests in flight finish on the old one, and a bundle that fails
    leaves the old one serving. Recorded in ``GET /v1/models/history``; every replica sharing
    the database follows within seconds."""
    return await _swap(context, version, principal, "activate", body.reason if body else None)


@router.post("/rollback", summary="Return to the version active before the current one")
async def rollback(
    context: ContextDep, principal: Admin, body: ActivationRequest | None = None
) -> dict[str, Any]:
    """Activate the version the current one replaced (from the history); 409 when the history
    holds no earlier version."""
    current = context.host.current
    if current is None:
        raise ProblemError(
            503, "not-ready", "No model is loaded yet.", headers={"Retry-After": "2"}
        )
    with context.sessions() as session:
        target = rollback_target(session, current.version)
    if target is None:
        raise ProblemError(
            409,
            "nothing-to-roll-back",
            f"The history holds no version active before {current.version}.",
            title="Nothing to roll back to",
        )
    _version, folder = target
    return await _swap(context, folder, principal, "rollback", body.reason if body else None)
