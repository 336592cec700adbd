"""Initial schema: api_keys, images, identifications, feedback, service_state.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    """Create every table of the first schema."""
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("secret_hash", sa.String(128), nullable=False),
        _ts("created_at"),
        _ts("revoked_at", nullable=True),
        _ts("last_used_at", nullable=True),
    )
    op.create_table(
        "images",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("path", sa.String(300), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("mime", sa.String(100), nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        _ts("created_at"),
    )
    op.create_table(
        "identifications",
        sa.Column("id", sa.String(36), primary_key=True),
        _ts("created_at"),
        sa.Column("created_by", sa.String(16), sa.ForeignKey("api_keys.id"), nullable=True),
        sa.Column("created_by_name", sa.String(200), nullable=False),
        sa.Column("image_sha256", sa.String(64), sa.ForeignKey("images.sha256"), nullable=False),
        sa.Column("model_version", sa.String(200), nullable=False),
        sa.Column("modality", sa.String(20), nullable=False),
        sa.Column("origin_country", sa.String(2), nullable=True),
        sa.Column("case_ref", sa.String(120), nullable=True),
        sa.Column("decision_kind", sa.String(40), nullable=False),
        sa.Column("label", sa.String(200), nullable=True),
        sa.Column("taxon", sa.String(200), nullable=True),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("rule", sa.String(100), nullable=False),
        sa.Column("result", sa.JSON, nullable=False),
    )
    op.create_index("ix_identifications_created_at", "identifications", ["created_at"])
    op.create_index("ix_identifications_case_ref", "identifications", ["case_ref"])
    op.create_index("ix_identifications_decision_kind", "identifications", ["decision_kind"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "identification_id",
            sa.String(36),
            sa.ForeignKey("identifications.id"),
            nullable=False,
        ),
        _ts("created_at"),
        sa.Column("created_by", sa.String(16), sa.ForeignKey("api_keys.id"), nullable=True),
        sa.Column("created_by_name", sa.String(200), nullable=False),
        sa.Column("verdict", sa.String(20), nullable=False),
        sa.Column("label", sa.String(200), nullable=True),
        sa.Column("taxon_id", sa.String(200), nullable=True),
        sa.Column("note", sa.Text, nullable=True),
    )
    op.create_index("ix_feedback_identification", "feedback", ["identification_id", "created_at"])
    op.create_table(
        "service_state",
        sa.Column("key", sa.String(100), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        _ts("updated_at"),
    )


def downgrade() -> None:
    """Drop every table of the first schema."""
    op.drop_table("service_state")
    op.drop_index("ix_feedback_identification", table_name="feedback")
    op.drop_table("feedback")
    op.drop_index("ix_identifications_decision_kind", table_name="identifications")
    op.drop_index("ix_identifications_case_ref", table_name="identifications")
    op.drop_index("ix_identifications_created_at", table_name="identifications")
    op.drop_table("identifications")
    op.drop_table("images")
    op.drop_table("api_keys")
