"""Capacity timeline: parked (scaled-to-zero) periods and wakes from zero.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("capacity_timeline") as batch:
        batch.add_column(
            sa.Column("parked", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(
            sa.Column("woke_from_zero", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("capacity_timeline") as batch:
        batch.drop_column("woke_from_zero")
        batch.drop_column("parked")
