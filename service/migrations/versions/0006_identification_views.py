"""The photos of a multi-view identification (one object, up to six photos, one answer).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``identification_views``: position -> image of each view of an identification."""
    op.create_table(
        "identification_views",
        sa.Column(
            "identification_id",
            sa.String(36),
            sa.ForeignKey("identifications.id"),
            primary_key=True,
        ),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("image_sha256", sa.String(64), sa.ForeignKey("images.sha256"), nullable=False),
    )
    op.create_index("ix_identification_views_image", "identification_views", ["image_sha256"])


def downgrade() -> None:
    """Drop the table."""
    op.drop_index("ix_identification_views_image", table_name="identification_views")
    op.drop_table("identification_views")
