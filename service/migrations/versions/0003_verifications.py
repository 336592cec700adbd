"""Permit verifications: ``verifications`` (images checked against declared permit data).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``verifications`` with its indexes (existing tables are untouched)."""
    op.create_table(
        "verifications",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(16), sa.ForeignKey("api_keys.id"), nullable=True),
        sa.Column("created_by_name", sa.String(200), nullable=False),
        sa.Column("case_ref", sa.String(120), nullable=True),
        sa.Column("permit_number", sa.String(64), nullable=False),
        sa.Column("declared_taxon", sa.String(200), nullable=False),
        sa.Column("verdict", sa.String(20), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
    )
    op.create_index("ix_verifications_created_at", "verifications", ["created_at"])
    op.create_index("ix_verifications_case_ref", "verifications", ["case_ref"])
    op.create_index("ix_verifications_permit_number", "verifications", ["permit_number"])


def downgrade() -> None:
    """Drop ``verifications``."""
    op.drop_table("verifications")
