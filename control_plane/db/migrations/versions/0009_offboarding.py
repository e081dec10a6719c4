"""Offboarding: principals can be deactivated (`principals.active`, true for every existing
one) and deleted (`principals.deleted_at`: the row stays as a tombstone), and tokens record
who minted them (`tokens.created_by_id`, `tokens.created_by_name`;
empty for tokens minted before, which count as minted by their owner).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from persistence.columns import UtcDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("principals") as batch:
        batch.add_column(
            sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch.add_column(sa.Column("deleted_at", UtcDateTime(timezone=True), nullable=True))
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("created_by_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("created_by_name", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("created_by_name")
        batch.drop_column("created_by_id")
    with op.batch_alter_table("principals") as batch:
        batch.drop_column("deleted_at")
        batch.drop_column("active")
