"""Budgets (issue 16): `budgets` (an account's filter and alert thresholds, as JSON),
`budget_crossings` (each threshold crossed once per period: its key is the primary key) and
`webhook_deliveries` (the outbox of signed alert POSTs).

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from persistence.columns import UtcDateTime

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "budgets",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("display_name", sa.String(length=128), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_budgets_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budgets")),
    )
    op.create_index(op.f("ix_budgets_account_id"), "budgets", ["account_id"])
    op.create_table(
        "budget_crossings",
        sa.Column("alert_configuration_id", sa.String(length=36), nullable=False),
        sa.Column("period_start", UtcDateTime(), nullable=False),
        sa.Column("threshold", sa.String(length=32), nullable=False),
        sa.Column("budget_id", sa.String(length=36), nullable=False),
        sa.Column("spend", sa.String(length=40), nullable=False),
        sa.Column("crossed_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint(
            "alert_configuration_id", "period_start", "threshold", name=op.f("pk_budget_crossings")
        ),
    )
    op.create_index(op.f("ix_budget_crossings_budget_id"), "budget_crossings", ["budget_id"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("budget_id", sa.String(length=36), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UtcDateTime(), nullable=False),
        sa.Column("claimed_until", UtcDateTime(), nullable=True),
        sa.Column("delivered_at", UtcDateTime(), nullable=True),
        sa.Column("last_error", sa.String(length=512), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
    )
    op.create_index(
        "ix_webhook_deliveries_due", "webhook_deliveries", ["delivered_at", "next_attempt_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_due", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index(op.f("ix_budget_crossings_budget_id"), table_name="budget_crossings")
    op.drop_table("budget_crossings")
    op.drop_index(op.f("ix_budgets_account_id"), table_name="budgets")
    op.drop_table("budgets")
