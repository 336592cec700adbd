"""Feedback carries its own case reference: ``feedback.case_ref``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the nullable ``case_ref`` column to ``feedback`` (existing rows keep ``NULL``)."""
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("case_ref", sa.String(120), nullable=True))


def downgrade() -> None:
    """Drop ``feedback.case_ref``."""
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("case_ref")
