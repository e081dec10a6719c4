"""Endpoint generation: `endpoints.generation` counts the writes of what the reconciler
plans from (the config, a config update, the stored deployments), so the reconciler can
store a reconcile's outcome with an optimistic check instead of holding the endpoint's row
lock across provider calls (issue 15). Existing rows start at 0.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("generation", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_column("generation")
