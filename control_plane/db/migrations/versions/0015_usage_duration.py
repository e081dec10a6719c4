"""Request duration: `endpoint_usage.execution_duration_ms`, admission to the final byte, so
the billing dashboard can show an endpoint's latency percentiles. NULL for rows written
before this revision and for requests settled from a checkpoint after their process died.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("endpoint_usage") as batch:
        batch.add_column(sa.Column("execution_duration_ms", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("endpoint_usage") as batch:
        batch.drop_column("execution_duration_ms")
