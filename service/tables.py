"""The database schema (SQLAlchemy 2 ORM). Migrations in ``service/migrations`` create it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Dialect, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Store UTC; refuse naive datetimes, whose zone is unknown."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return aware UTC datetimes."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of every table."""


class ApiKey(Base):
    """A client's API key; only a hash of its secret is stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    secret_hash: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class StoredImage(Base):
    """An uploaded image, stored once under its sha256."""

    __tablename__ = "images"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(String(300))
    size: Mapped[int] = mapped_column(Integer)
    mime: Mapped[str] = mapped_column(String(100))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Identification(Base):
    """One answer of the model for one image."""

    __tablename__ = "identifications"
    __table_args__ = (
        Index("ix_identifications_created_at", "created_at"),
        Index("ix_identifications_case_ref", "case_ref"),
        Index("ix_identifications_decision_kind", "decision_kind"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    created_by: Mapped[str | None] = mapped_column(
        String(16), ForeignKey("api_keys.id"), nullable=True
    )
    created_by_name: Mapped[str] = mapped_column(String(200))
    image_sha256: Mapped[str] = mapped_column(String(64), ForeignKey("images.sha256"))
    model_version: Mapped[str] = mapped_column(String(200))
    modality: Mapped[str] = mapped_column(String(20))
    origin_country: Mapped[str | None] = mapped_column(String(2), nullable=True)
    case_ref: Mapped[str | None] = mapped_column(String(120), nullable=True)
    decision_kind: Mapped[str] = mapped_column(String(40))
    label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    taxon: Mapped[str | None] = mapped_column(String(200), nullable=True)
    probability: Mapped[float] = mapped_column(Float)
    rule: Mapped[str] = mapped_column(String(100))
    result: Mapped[dict[str, Any]] = mapped_column(JSON)


class IdentificationView(Base):
    """One photo of a multi-view identification (several photos of one object, one answer).
    Single-photo identifications have no rows here: their image is ``image_sha256``."""

    __tablename__ = "identification_views"
    __table_args__ = (Index("ix_identification_views_image", "image_sha256"),)

    identification_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("identifications.id"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_sha256: Mapped[str] = mapped_column(String(64), ForeignKey("images.sha256"))


class Feedback(Base):
    """An officer's confirmation or correction; append-only history."""

    __tablename__ = "feedback"
    __table_args__ = (Index("ix_feedback_identification", "identification_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    identification_id: Mapped[str] = mapped_column(String(36), ForeignKey("identifications.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    created_by: Mapped[str | None] = mapped_column(
        String(16), ForeignKey("api_keys.id"), nullable=True
    )
    created_by_name: Mapped[str] = mapped_column(String(200))
    verdict: Mapped[str] = mapped_column(String(20))
    label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    taxon_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    case_ref: Mapped[str | None] = mapped_column(String(120), nullable=True)


class ServiceState(Base):
    """Small key/value facts the service keeps across restarts (e.g. the active model)."""

    __tablename__ = "service_state"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Verification(Base):
    """A check of images against declared permit data (``result`` is language-independent;
    words are added when it is rendered). The images' identifications are rows of their own."""

    __tablename__ = "verifications"
    __table_args__ = (
        Index("ix_verifications_created_at", "created_at"),
        Index("ix_verifications_case_ref", "case_ref"),
        Index("ix_verifications_permit_number", "permit_number"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    created_by: Mapped[str | None] = mapped_column(
        String(16), ForeignKey("api_keys.id"), nullable=True
    )
    created_by_name: Mapped[str] = mapped_column(String(200))
    case_ref: Mapped[str | None] = mapped_column(String(120), nullable=True)
    permit_number: Mapped[str] = mapped_column(String(64))
    declared_taxon: Mapped[str] = mapped_column(String(200))
    verdict: Mapped[str] = mapped_column(String(20))
    result: Mapped[dict[str, Any]] = mapped_column(JSON)


class ModelActivation(Base):
    """One activation or rollback of a model version: who, when, from which version, to which."""

    __tablename__ = "model_activations"
    __table_args__ = (Index("ix_model_activations_at", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    action: Mapped[str] = mapped_column(String(20))
    actor: Mapped[str | None] = mapped_column(String(16), ForeignKey("api_keys.id"), nullable=True)
    actor_name: Mapped[str] = mapped_column(String(200))
    from_version: Mapped[str | None] = mapped_column(String(200), nullable=True)
    from_folder: Mapped[str | None] = mapped_column(String(200), nullable=True)
    to_version: Mapped[str] = mapped_column(String(200))
    to_folder: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    modality: Mapped[str] = mapped_column(String(20), default="camera", server_default="camera")


class FeedbackResolution(Base):
    """A trainer's label for an image officers disagreed on (it then joins the export)."""

    __tablename__ = "feedback_resolutions"

    image_sha256: Mapped[str] = mapped_column(
        String(64), ForeignKey("images.sha256"), primary_key=True
    )
    label: Mapped[str] = mapped_column(String(200))
    resolved_at: Mapped[datetime] = mapped_column(UtcDateTime())
    resolved_by: Mapped[str | None] = mapped_column(
        String(16), ForeignKey("api_keys.id"), nullable=True
    )
    resolved_by_name: Mapped[str] = mapped_column(String(200))
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
