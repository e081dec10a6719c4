"""usage ledger: `endpoint_usage` and `inference_log` (billing.ledger.models)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 03:01:14.336958
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# The DDL of billing.ledger.models.UtcDateTime, spelled out so this migration stays frozen
# whatever later happens to the billing package.
_UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "endpoint_usage",
        sa.Column("databricks_request_id", sa.String(length=64), nullable=False),
        sa.Column("client_request_id", sa.String(length=256), nullable=True),
        sa.Column("requester", sa.String(length=255), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("request_time", _UTC_DATETIME, nullable=False),
        sa.Column("served_entity_id", sa.String(length=255), nullable=False),
        sa.Column("endpoint_name", sa.String(length=63), nullable=False),
        sa.Column("endpoint_id", sa.String(length=32), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=True),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("input_token_count", sa.Integer(), nullable=False),
        sa.Column("output_token_count", sa.Integer(), nullable=False),
        sa.Column("request_streaming", sa.Boolean(), nullable=False),
        sa.Column("usage_context", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("databricks_request_id", name=op.f("pk_endpoint_usage")),
    )
    with op.batch_alter_table("endpoint_usage", schema=None) as batch_op:
        batch_op.create_index(
            "ix_endpoint_usage_endpoint_id_request_time",
            ["endpoint_id", "request_time"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_endpoint_usage_request_time"), ["request_time"], unique=False
        )

    op.create_table(
        "inference_log",
        sa.Column("databricks_request_id", sa.String(length=64), nullable=False),
        sa.Column("endpoint_id", sa.String(length=32), nullable=False),
        sa.Column("endpoint_name", sa.String(length=63), nullable=False),
        sa.Column("served_entity_id", sa.String(length=255), nullable=False),
        sa.Column("request_time", _UTC_DATETIME, nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("response", sa.Text(), nullable=True),
        sa.Column("request_truncated", sa.Boolean(), nullable=False),
        sa.Column("response_truncated", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("databricks_request_id", name=op.f("pk_inference_log")),
    )
    with op.batch_alter_table("inference_log", schema=None) as batch_op:
        batch_op.create_index(
            "ix_inference_log_endpoint_id_request_time",
            ["endpoint_id", "request_time"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("inference_log", schema=None) as batch_op:
        batch_op.drop_index("ix_inference_log_endpoint_id_request_time")
    op.drop_table("inference_log")
    with op.batch_alter_table("endpoint_usage", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_endpoint_usage_request_time"))
        batch_op.drop_index("ix_endpoint_usage_endpoint_id_request_time")
    op.drop_table("endpoint_usage")
