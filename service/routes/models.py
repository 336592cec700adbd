"""``/v1/models``: list bundles, show the active ones (one per modality: camera and x-ray),
activate another or roll back (admin), and the history of activations.

Each modality (camera, x-ray) has its own active model, history, roll-back and replica
following; the history lists both, each row naming its modality."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from model.predictor import Predictor
from model.vocabulary import MODALITIES, Modality
from service.activations import Change, history, record_change, rollback_target
from service.context import AppContext
from service.deps import Admin, ContextDep, Reader
from service.keys import Principal, Role
from service.modelhost import (
    ModalityMismatchError,
    ModelLoadError,
    ModelNotFoundError,
    describe_predictor,
)
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
    actives = context.host.actives()
    body: dict[str, Any] = {
        "active": current.version if current is not None else None,
        "active_by_modality": {m: actives[m].version if m in actives else None for m in MODALITIES},
    }
    if admin:
        body["weights_dir"] = str(context.host.weights_dir)
    body["items"] = items
    return body


@router.get(
    "/active",
    summary="The serving models, their labels and thresholds",
    responses={404: {"description": "no model for that modality"}},
)
def active_model(
    context: ContextDep,
    _principal: Reader,
    modality: Annotated[Modality | None, Query(description="camera or xray")] = None,
) -> dict[str, Any]:
    """The active camera bundle (the web page offers its labels for corrections), with every
    active bundle under ``by_modality``; ``?modality=xray`` shows that one alone."""
    actives = context.host.actives()
    if modality is not None:
        chosen = actives.get(modality)
        if chosen is None:
            raise ProblemError(
                404,
                "no-model-for-modality",
                f"No {modality} model is active; an administrator activates one with "
                f"POST /v1/models/{{version}}/activate?modality={modality}.",
                title="No model for this modality",
            )
        return {**describe_predictor(chosen, modality), "by_modality": _by_modality(actives)}
    current = context.host.current
    if current is None:
        raise ProblemError(
            503, "not-ready", "No model is loaded yet.", headers={"Retry-After": "2"}
        )
    slot = next(m for m, p in actives.items() if p is current)
    return {**describe_predictor(current, slot), "by_modality": _by_modality(actives)}


def _by_modality(actives: dict[str, Predictor]) -> dict[str, dict[str, Any] | None]:
    return {m: describe_predictor(actives[m], m) if m in actives else None for m in MODALITIES}


class ActivationRequest(BaseModel):
    """Optional body of an activation or rollback: why (recorded in the history)."""

    reason: str | None = Field(default=None, max_length=1000)


@router.get("/history", summary="Every activation and rollback, newest first")
def model_history(
    context: ContextDep,
    _principal: Reader,
    modality: Annotated[
        Modality | None, Query(description="only this modality's (default: all)")
    ] = None,
) -> dict[str, Any]:
    """Who activated or rolled back which version of which modality, when, from which version,
    and why."""
    with context.sessions() as session:
        return {"items": history(session, modality=modality)}


async def _swap(
    context: AppContext,
    version: str,
    principal: Principal,
    action: str,
    reason: str | None,
    modality: str | None = None,
) -> dict[str, Any]:
    logger.info(
        "key %s (%s): %s model %s for %s",
        principal.key_id,
        principal.name,
        action,
        version,
        modality or "its modalities",
    )

    def persist(predictor: Predictor, slots: tuple[str, ...]) -> None:
        # runs under the host's swap lock, before the swap: current_for(slot) is the one replaced
        with context.sessions() as session:
            for slot in slots:
                before = context.host.current_for(slot)
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
                        modality=slot,
                    ),
                )

    try:
        predictor, slots = await context.host.activate(version, persist, modality=modality)
    except ModalityMismatchError as exc:
        raise ProblemError(
            422, "modality-mismatch", str(exc), title="Bundle not made for this modality"
        ) from None
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
    return {**describe_predictor(predictor, slots[0]), "activated_for": list(slots)}


@router.post(
    "/{version}/activate",
    summary="Load, verify, warm up and swap in a bundle",
    responses={422: {"description": "not a bundle for that modality"}},
)
async def activate(
    version: str,
    context: ContextDep,
    principal: Admin,
    body: ActivationRequest | None = None,
    modality: Annotated[
        Modality | None,
        Query(description="the modality it serves (default: the bundle's own)"),
    ] = None,
) -> dict[str, Any]:
    """Swap the serving model of a modality (camera and x-ray each have one); requests in flight
    finish on the old one, and a bundle that fails leaves the old one serving. Camera
    activations are recorded in ``GET /v1/models/history`` and every replica sharing the
    database follows within seconds."""
    return await _swap(
        context, version, principal, "activate", body.reason if body else None, modality
    )


@router.post("/rollback", summary="Return to the version active before the current one")
async def rollback(
    context: ContextDep,
    principal: Admin,
    body: ActivationRequest | None = None,
    modality: Annotated[
        Modality, Query(description="whose model to roll back: camera (default) or xray")
    ] = "camera",
) -> dict[str, Any]:
    """Activate the version the current one of ``modality`` replaced (from the history); 409
    when the history holds no earlier version of that modality."""
    current = context.host.current_for(modality)
    if current is None:
        if modality == "camera":
            raise ProblemError(
                503, "not-ready", "No model is loaded yet.", headers={"Retry-After": "2"}
            )
        raise ProblemError(
            409,
            "nothing-to-roll-back",
            f"No {modality} model is active, so there is nothing to roll back.",
            title="Nothing to roll back to",
        )
    with context.sessions() as session:
        target = rollback_target(session, current.version, modality)
    if target is None:
        raise ProblemError(
            409,
            "nothing-to-roll-back",
            f"The history holds no {modality} version active before {current.version}.",
            title="Nothing to roll back to",
        )
    _version, folder = target
    return await _swap(
        context, folder, principal, "rollback", body.reason if body else None, modality
    )
