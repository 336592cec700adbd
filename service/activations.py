"""Which model version is active, and the history of every activation and rollback.

Each modality (camera, x-ray) has its own active model. Its folder is persisted in
``service_state`` (:func:`~service.repository.active_model_key`): replicas follow it
(:mod:`service.replicas`) and a restart serves it. Every change also appends a row to
``model_activations`` (modality, who, when, from, to, why) in the same transaction, so the
history and the persisted choice never disagree. A rollback goes back to the version of that
modality that was active before the current one: the ``from`` of the latest history row that
made the current version active.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.repository import active_model_key, iso, utcnow
from service.tables import ModelActivation, ServiceState

HISTORY_LIMIT = 200
"""Rows ``GET /v1/models/history`` returns (newest first)."""


@dataclass(frozen=True)
class Change:
    """One activation or rollback about to be recorded."""

    action: str  # "activate" or "rollback"
    actor_key_id: str | None
    actor_name: str
    from_version: str | None
    from_folder: str | None
    to_version: str
    to_folder: str
    reason: str | None = None
    modality: str = "camera"


def record_change(session: Session, change: Change) -> None:
    """Persist the new active folder of the change's modality and append the history row, in
    one commit."""
    now = utcnow()
    key = active_model_key(change.modality)
    state = session.get(ServiceState, key)
    if state is None:
        session.add(ServiceState(key=key, value=change.to_folder, updated_at=now))
    else:
        state.value = change.to_folder
        state.updated_at = now
    session.add(
        ModelActivation(
            at=now,
            action=change.action,
            actor=change.actor_key_id,
            actor_name=change.actor_name,
            from_version=change.from_version,
            from_folder=change.from_folder,
            to_version=change.to_version,
            to_folder=change.to_folder,
            reason=change.reason,
            modality=change.modality,
        )
    )
    session.commit()


def rollback_target(
    session: Session, current_version: str, modality: str = "camera"
) -> tuple[str, str] | None:
    """``(version, folder)`` of ``modality`` that was active before ``current_version``, or
    None when the history holds none.

    Rollbacks stack: each rollback undoes the latest activation not yet undone, so rolling back
    twice after activating A -> B -> C returns to A (and once more after A -> B -> rollback
    finds nothing), never ping-pongs between two versions.
    """
    undone = 0
    rows = session.scalars(
        select(ModelActivation)
        .where(ModelActivation.modality == modality)
        .order_by(ModelActivation.id.desc())
    )
    for row in rows:
        if row.action == "rollback":
            undone += 1
        elif undone:
            undone -= 1
        else:
            if row.to_version != current_version or row.from_version is None:
                return None
            if row.from_folder is None:
                return None
            return row.from_version, row.from_folder
    return None


def history(
    session: Session, limit: int = HISTORY_LIMIT, modality: str | None = None
) -> list[dict[str, Any]]:
    """The latest activations and rollbacks (of ``modality``, else of every modality), newest
    first (see docs/api.md)."""
    query = select(ModelActivation)
    if modality is not None:
        query = query.where(ModelActivation.modality == modality)
    rows = session.scalars(query.order_by(ModelActivation.id.desc()).limit(limit)).all()
    return [
        {
            "id": row.id,
            "at": iso(row.at),
            "modality": row.modality,
            "action": row.action,
            "by": row.actor_name,
            "by_key": row.actor,
            "from": row.from_version,
            "to": row.to_version,
            "folder": row.to_folder,
            "reason": row.reason,
        }
        for row in rows
    ]
