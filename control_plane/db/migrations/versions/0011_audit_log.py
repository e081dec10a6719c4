"""The audit log: `audit_log` holds one row per audited management, permission, token,
SCIM and billing request and per failed authentication (control_plane.audit; issue 14,
finding 13), listed newest first per workspace through `ix_audit_log_workspace_time`.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from persistence.columns import UtcDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("event_id", sa.String(length=32), nullable=False),
        sa.Column("event_time", UtcDateTime(timezone=True), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=True),
        sa.Column("workspace_id", sa.String(length=32), nullable=True),
        sa.Column("actor", sa.String(length=32), nullable=False),
        sa.Column("user_name", sa.String(length=255), nullable=True),
        sa.Column("principal_id", sa.Integer(), nullable=True),
        sa.Column("token_id", sa.String(length=32), nullable=True),
        sa.Column("action", sa.String(length=96), nullable=False),
        sa.Column("target", sa.JSON(), nullable=False),
        sa.Column("source_ip_address", sa.String(length=64), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("result", sa.String(length=16), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_audit_log")),
    )
    op.create_index(
        "ix_audit_log_workspace_time", "audit_log", ["workspace_id", "event_time", "event_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_audit_log_workspace_time", table_name="audit_log")
    op.drop_table("audit_log")
