"""Billing: hourly usage records, invoices and their lines, and Stripe delivery (customers,
the outbox, webhook events).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from persistence.columns import ExactNumeric, UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "invoices",
        sa.Column("invoice_id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("subtotal", ExactNumeric(precision=20, scale=2), nullable=False),
        sa.Column("total", ExactNumeric(precision=20, scale=2), nullable=False),
        sa.Column("rate_card_version", sa.String(length=64), nullable=True),
        sa.Column("created_at", UtcDateTime(timezone=True), nullable=False),
        sa.Column("stripe_invoice_id", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("invoice_id", name=op.f("pk_invoices")),
        sa.UniqueConstraint("workspace_id", "period", name=op.f("uq_invoices_workspace_id_period")),
    )
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_invoices_stripe_invoice_id"), ["stripe_invoice_id"], unique=False
        )

    op.create_table(
        "stripe_customers",
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("customer_id", sa.String(length=255), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", name=op.f("pk_stripe_customers")),
        sa.UniqueConstraint("customer_id", name=op.f("uq_stripe_customers_customer_id")),
    )
    op.create_table(
        "stripe_outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UtcDateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("stripe_object_id", sa.String(length=255), nullable=True),
        sa.Column("created_at", UtcDateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", UtcDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_outbox")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_stripe_outbox_idempotency_key")),
    )
    with op.batch_alter_table("stripe_outbox", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_stripe_outbox_status"), ["status"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_stripe_outbox_workspace_id"), ["workspace_id"], unique=False
        )

    op.create_table(
        "stripe_webhook_events",
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("object_id", sa.String(length=255), nullable=True),
        sa.Column("received_at", UtcDateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_stripe_webhook_events")),
    )
    op.create_table(
        "usage_records",
        sa.Column("record_id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=True),
        sa.Column("sku_name", sa.String(length=128), nullable=False),
        sa.Column("cloud", sa.String(length=16), nullable=False),
        sa.Column("usage_start_time", UtcDateTime(timezone=True), nullable=False),
        sa.Column("usage_end_time", UtcDateTime(timezone=True), nullable=False),
        sa.Column("usage_date", sa.Date(), nullable=False),
        sa.Column("custom_tags", sa.JSON(), nullable=False),
        sa.Column("usage_unit", sa.String(length=8), nullable=False),
        sa.Column(
            "usage_quantity",
            ExactNumeric(precision=38, scale=18),
            nullable=False,
        ),
        sa.Column("usage_metadata", sa.JSON(), nullable=False),
        sa.Column("identity_metadata", sa.JSON(), nullable=False),
        sa.Column("record_type", sa.String(length=16), nullable=False),
        sa.Column("billing_origin_product", sa.String(length=32), nullable=False),
        sa.Column("product_features", sa.JSON(), nullable=False),
        sa.Column("usage_type", sa.String(length=16), nullable=False),
        sa.Column("endpoint_id", sa.String(length=32), nullable=False),
        sa.Column("served_entity_name", sa.String(length=255), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column(
            "chunk_seconds",
            ExactNumeric(precision=38, scale=18),
            nullable=False,
        ),
        sa.Column("launches", sa.Integer(), nullable=False),
        sa.Column("rate_card_version", sa.String(length=64), nullable=False),
        sa.Column("corrects", sa.String(length=64), nullable=True),
        sa.Column("created_at", UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("record_id", name=op.f("pk_usage_records")),
    )
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.create_index(
            "ix_usage_records_endpoint_id_usage_start_time",
            ["endpoint_id", "usage_start_time"],
            unique=False,
        )
        batch_op.create_index(
            "ix_usage_records_usage_start_time", ["usage_start_time"], unique=False
        )
        batch_op.create_index(
            "ix_usage_records_workspace_id_usage_start_time",
            ["workspace_id", "usage_start_time"],
            unique=False,
        )

    op.create_table(
        "invoice_lines",
        sa.Column("invoice_id", sa.String(length=64), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("sku_name", sa.String(length=128), nullable=False),
        sa.Column("endpoint_id", sa.String(length=32), nullable=False),
        sa.Column("endpoint_name", sa.String(length=63), nullable=False),
        sa.Column("usage_type", sa.String(length=16), nullable=False),
        sa.Column("dbu", ExactNumeric(precision=38, scale=18), nullable=False),
        sa.Column(
            "dollars_per_dbu",
            ExactNumeric(precision=20, scale=6),
            nullable=False,
        ),
        sa.Column("amount", ExactNumeric(precision=20, scale=2), nullable=False),
        sa.ForeignKeyConstraint(
            ["invoice_id"],
            ["invoices.invoice_id"],
            name=op.f("fk_invoice_lines_invoice_id_invoices"),
        ),
        sa.PrimaryKeyConstraint("invoice_id", "line_no", name=op.f("pk_invoice_lines")),
    )


def downgrade() -> None:
    op.drop_table("invoice_lines")
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_records_workspace_id_usage_start_time")
        batch_op.drop_index("ix_usage_records_usage_start_time")
        batch_op.drop_index("ix_usage_records_endpoint_id_usage_start_time")

    op.drop_table("usage_records")
    op.drop_table("stripe_webhook_events")
    with op.batch_alter_table("stripe_outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stripe_outbox_workspace_id"))
        batch_op.drop_index(batch_op.f("ix_stripe_outbox_status"))

    op.drop_table("stripe_outbox")
    op.drop_table("stripe_customers")
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invoices_stripe_invoice_id"))

    op.drop_table("invoices")
