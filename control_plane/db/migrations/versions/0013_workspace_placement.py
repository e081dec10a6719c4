"""Workspace placement: `workspaces.cloud` and `workspaces.region` say where a workspace's
endpoints run (their GPU node groups) and which SKUs its usage is billed under. NULL (every
existing row): the installation's `cloud` and `billing.region`, as before.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workspaces") as batch:
        batch.add_column(sa.Column("cloud", sa.String(16), nullable=True))
        batch.add_column(sa.Column("region", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workspaces") as batch:
        batch.drop_column("region")
        batch.drop_column("cloud")
