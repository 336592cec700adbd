"""Model activation history and trainers' resolutions of feedback conflicts.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``model_activations`` and ``feedback_resolutions``."""
    op.create_table(
        "model_activations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("actor", sa.String(16), sa.ForeignKey("api_keys.id"), nullable=True),
        sa.Column("actor_name", sa.String(200), nullable=False),
        sa.Column("from_version", sa.String(200), nullable=True),
        sa.Column("from_folder", sa.String(200), nullable=True),
        sa.Column("to_version", sa.String(200), nullable=False),
        sa.Column("to_folder", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
    )
    op.create_index("ix_model_activations_at", "model_activations", ["at"])
    op.create_table(
        "feedback_resolutions",
        sa.Column("image_sha256", sa.String(64), sa.ForeignKey("images.sha256"), primary_key=True),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_by", sa.String(16), sa.ForeignKey("api_keys.id"), nullable=True),
        sa.Column("resolved_by_name", sa.String(200), nullable=False),
        sa.Column("note", sa.Text, nullable=True),
    )


def downgrade() -> None:
    """Drop both tables."""
    op.drop_table("feedback_resolutions")
    op.drop_index("ix_model_activations_at", table_name="model_activations")
    op.drop_table("model_activations")
