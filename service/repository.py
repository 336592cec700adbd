"""Storage operations on identifications, images and feedback (SQLAlchemy sessions)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.imagestore import PreparedImage
from service.keys import Principal
from service.tables import (
    Feedback,
    Identification,
    IdentificationView,
    ServiceState,
    StoredImage,
)

ACTIVE_MODEL_KEY = "active_model_version"
"""State key of the active camera model (the key predates x-ray bundles, so it has no suffix)."""


def active_model_key(modality: str) -> str:
    """State key of the active model of ``modality``: ``active_model_version`` for camera,
    ``active_model_version:xray`` for x-ray."""
    return ACTIVE_MODEL_KEY if modality == "camera" else f"{ACTIVE_MODEL_KEY}:{modality}"


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def iso(value: datetime) -> str:
    """ISO 8601 UTC with a ``Z``."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def record_image(session: Session, image: PreparedImage, relative_path: str) -> StoredImage:
    """The image row for ``image``, created if new (the file must already be stored)."""
    row = session.get(StoredImage, image.sha256)
    if row is not None:
        return row
    row = StoredImage(**_image_row(image, relative_path))
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:  # stored concurrently by another request: same content
        existing = session.get(StoredImage, image.sha256)
        if existing is None:
            raise
        return existing
    return row


def insert_images_if_new(session: Session, images: Sequence[tuple[PreparedImage, str]]) -> None:
    """Add the image rows of ``images`` (image, stored path) that do not exist yet, in one
    statement and without a savepoint or a read first: ``INSERT ... ON CONFLICT DO NOTHING`` on
    SQLite and PostgreSQL (:func:`record_image` elsewhere). Same content means same row, so a
    concurrent insert of it is no conflict."""
    if not images:
        return
    dialect = session.get_bind().dialect.name
    if dialect not in ("sqlite", "postgresql"):  # pragma: no cover - SQLite and PostgreSQL only
        for image, relative_path in images:
            record_image(session, image, relative_path)
        return
    dialect_insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
    session.execute(
        dialect_insert(StoredImage).on_conflict_do_nothing(index_elements=["sha256"]),
        [_image_row(image, relative_path) for image, relative_path in images],
    )


def _image_row(image: PreparedImage, relative_path: str) -> dict[str, Any]:
    """The column values of the image row for ``image``."""
    return {
        "sha256": image.sha256,
        "path": relative_path,
        "size": image.size,
        "mime": image.mime,
        "width": image.width,
        "height": image.height,
        "created_at": utcnow(),
    }


@dataclass(frozen=True)
class NewIdentification:
    """What an identification row records (``result`` is the response body)."""

    principal: Principal
    image_sha256: str
    model_version: str
    modality: str
    origin_country: str | None
    case_ref: str | None
    decision_kind: str
    label: str | None
    taxon: str | None
    probability: float
    rule: str
    result: dict[str, Any]
    view_images: tuple[str, ...] = ()
    """The sha256 of every photo of a multi-view identification, in order (empty for one)."""


def new_id() -> str:
    """A fresh UUID4 string."""
    return str(uuid.uuid4())


def _identification_row(
    new: NewIdentification, *, ident_id: str, created_at: datetime
) -> dict[str, Any]:
    return {
        "id": ident_id,
        "created_at": created_at,
        "created_by": new.principal.key_id,
        "created_by_name": new.principal.name,
        "image_sha256": new.image_sha256,
        "model_version": new.model_version,
        "modality": new.modality,
        "origin_country": new.origin_country,
        "case_ref": new.case_ref,
        "decision_kind": new.decision_kind,
        "label": new.label,
        "taxon": new.taxon,
        "probability": new.probability,
        "rule": new.rule,
        "result": new.result,
    }


def add_identification(
    session: Session, new: NewIdentification, *, ident_id: str, created_at: datetime
) -> Identification:
    """Insert one identification (the caller commits)."""
    row = Identification(**_identification_row(new, ident_id=ident_id, created_at=created_at))
    session.add(row)
    return row


def add_identifications(
    session: Session, rows: Sequence[tuple[NewIdentification, str, datetime]]
) -> None:
    """Insert identifications (new, id, created_at) in one ORM bulk ``INSERT`` (no unit of work,
    no objects: the group commit's path; the caller commits)."""
    if rows:
        session.execute(
            insert(Identification),
            [
                _identification_row(new, ident_id=ident_id, created_at=created_at)
                for new, ident_id, created_at in rows
            ],
        )
        views = [
            {"identification_id": ident_id, "position": position, "image_sha256": sha256}
            for new, ident_id, _created_at in rows
            for position, sha256 in enumerate(new.view_images)
        ]
        if views:
            session.execute(insert(IdentificationView), views)


@dataclass(frozen=True)
class ListFilter:
    """Filters of the identification list."""

    since: datetime | None = None
    until: datetime | None = None
    case_ref: str | None = None
    decision: str | None = None
    label: str | None = None
    created_by: str | None = None
    visible_keys: frozenset[str] | None = None
    """Only records made by these key ids (the caller's record scope); None: all."""


def list_identifications(
    session: Session, filters: ListFilter, *, limit: int, offset: int
) -> tuple[list[Identification], int]:
    """A page of identifications, newest first, and the total that match."""
    query = select(Identification)
    if filters.since is not None:
        query = query.where(Identification.created_at >= filters.since)
    if filters.until is not None:
        query = query.where(Identification.created_at < filters.until)
    if filters.case_ref is not None:
        query = query.where(Identification.case_ref == filters.case_ref)
    if filters.decision is not None:
        query = query.where(Identification.decision_kind == filters.decision)
    if filters.label is not None:
        query = query.where(Identification.label == filters.label)
    if filters.created_by is not None:
        query = query.where(Identification.created_by == filters.created_by)
    if filters.visible_keys is not None:
        query = query.where(Identification.created_by.in_(sorted(filters.visible_keys)))
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.order_by(Identification.created_at.desc(), Identification.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return list(rows), int(total)


def add_feedback(
    session: Session,
    identification: Identification,
    principal: Principal,
    *,
    verdict: str,
    label: str | None,
    taxon_id: str | None,
    note: str | None,
    case_ref: str | None = None,
) -> Feedback:
    """Append a feedback entry (never updates an older one) and commit."""
    row = Feedback(
        id=new_id(),
        identification_id=identification.id,
        created_at=utcnow(),
        created_by=principal.key_id,
        created_by_name=principal.name,
        verdict=verdict,
        label=label,
        taxon_id=taxon_id,
        note=note,
        case_ref=case_ref,
    )
    session.add(row)
    session.commit()
    return row


def feedback_history(session: Session, identification_id: str) -> list[Feedback]:
    """Every feedback entry of an identification, oldest first."""
    return list(
        session.scalars(
            select(Feedback)
            .where(Feedback.identification_id == identification_id)
            .order_by(Feedback.created_at, Feedback.id)
        ).all()
    )


def latest_feedback(session: Session, ids: Sequence[str]) -> dict[str, Feedback]:
    """The newest feedback entry of each identification in ``ids`` that has one."""
    if not ids:
        return {}
    rows = session.scalars(
        select(Feedback)
        .where(Feedback.identification_id.in_(list(ids)))
        .order_by(Feedback.created_at, Feedback.id)
    ).all()
    latest: dict[str, Feedback] = {}
    for row in rows:
        latest[row.identification_id] = row  # later rows win
    return latest


def view_shas(session: Session, ident: Identification) -> list[str]:
    """The sha256 of each photo of an identification, in order: its views for a multi-view
    identification, else its one image."""
    shas = session.scalars(
        select(IdentificationView.image_sha256)
        .where(IdentificationView.identification_id == ident.id)
        .order_by(IdentificationView.position)
    ).all()
    return list(shas) or [ident.image_sha256]


def identification_images(session: Session, ident: Identification) -> list[StoredImage]:
    """The stored image of each photo of an identification, in order (missing rows left out)."""
    images = [session.get(StoredImage, sha256) for sha256 in view_shas(session, ident)]
    return [image for image in images if image is not None]


def iter_export_rows(
    session: Session, since: datetime | None = None
) -> Iterator[tuple[Identification, Feedback, StoredImage]]:
    """Each identification with feedback, its latest feedback entry and each of its images
    (one row per photo of a multi-view identification)."""
    query = select(Feedback).order_by(Feedback.created_at, Feedback.id)
    if since is not None:
        query = query.where(Feedback.created_at >= since)
    latest: dict[str, Feedback] = {}
    for row in session.scalars(query):
        latest[row.identification_id] = row
    for ident_id in sorted(latest):
        ident = session.get(Identification, ident_id)
        if ident is None:
            continue
        for image in identification_images(session, ident):
            yield ident, latest[ident_id], image


def get_state(session: Session, key: str) -> str | None:
    """A persisted service fact, or None."""
    row = session.get(ServiceState, key)
    return row.value if row is not None else None


def set_state(session: Session, key: str, value: str) -> None:
    """Persist a service fact and commit."""
    row = session.get(ServiceState, key)
    if row is None:
        session.add(ServiceState(key=key, value=value, updated_at=utcnow()))
    else:
        row.value = value
        row.updated_at = utcnow()
    session.commit()
