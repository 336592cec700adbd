"""``/v1/models``: list bundles, show the active one, activate another (admin)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter

from model.predictor import Predictor
from service.deps import Admin, ContextDep, Reader
from service.keys import Role
from service.modelhost import ModelLoadError, ModelNotFoundError, describe_predictor
from service.problems import ProblemError
from service.repository import ACTIVE_MODEL_KEY, set_state

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


@router.post("/{version}/activate", summary="Load, verify, warm up and swap in a bundle")
async def activate(version: str, context: ContextDep, principal: Admin) -> dict[str, Any]:
    """Swap the serving model; requests in flight finish on the old one, and a bundle that fails
    leaves the old one serving."""
    logger.info("key %s (%s) activates model %s", principal.key_id, principal.name, version)

    def persist(predictor: Predictor) -> None:
        with context.sessions() as session:
            set_state(session, ACTIVE_MODEL_KEY, predictor.bundle.path.name)

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
