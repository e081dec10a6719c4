"""Usage checkpoints: `usage_checkpoints` holds every accepted request still in flight, with
the usage delivered so far (billing.ledger.models.UsageCheckpoint), so that the requests of a
process killed mid-flight are settled from their last checkpoint instead of vanishing from
billing (issue 14, finding 5).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from persistence.columns import UtcDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_checkpoints",
        sa.Column("databricks_request_id", sa.String(length=64), nullable=False),
        sa.Column("client_request_id", sa.String(length=256), nullable=True),
        sa.Column("requester", sa.String(length=255), nullable=False),
        sa.Column("request_time", UtcDateTime(timezone=True), nullable=False),
        sa.Column("served_entity_id", sa.String(length=255), nullable=False),
        sa.Column("entity_name", sa.String(length=255), nullable=False),
        sa.Column("entity_version", sa.String(length=64), nullable=False),
        sa.Column("model_family", sa.String(length=32), nullable=False),
        sa.Column("workload_type", sa.String(length=32), nullable=False),
        sa.Column("endpoint_name", sa.String(length=63), nullable=False),
        sa.Column("endpoint_id", sa.String(length=32), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=True),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("input_token_count", sa.Integer(), nullable=False),
        sa.Column("output_token_count", sa.Integer(), nullable=False),
        sa.Column("request_streaming", sa.Boolean(), nullable=False),
        sa.Column("usage_context", sa.JSON(), nullable=True),
        sa.Column("owner", sa.String(length=32), nullable=False),
        sa.Column("updated_at", UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("databricks_request_id", name=op.f("pk_usage_checkpoints")),
    )


def downgrade() -> None:
    op.drop_table("usage_checkpoints")
