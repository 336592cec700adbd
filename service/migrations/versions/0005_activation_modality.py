"""The modality of each model activation (camera and x-ray models have their own history).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``model_activations.modality``; earlier rows were camera activations."""
    with op.batch_alter_table("model_activations") as batch:
        batch.add_column(
            sa.Column("modality", sa.String(20), nullable=False, server_default="camera")
        )


def downgrade() -> None:
    """Drop the column."""
    with op.batch_alter_table("model_activations") as batch:
        batch.drop_column("modality")
