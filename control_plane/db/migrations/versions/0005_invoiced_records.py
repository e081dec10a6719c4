"""Invoices: which invoice billed each usage record (late usage carries forward).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "invoiced_records",
        sa.Column("record_id", sa.String(length=64), nullable=False),
        sa.Column("invoice_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["invoice_id"],
            ["invoices.invoice_id"],
            name=op.f("fk_invoiced_records_invoice_id_invoices"),
        ),
        sa.PrimaryKeyConstraint("record_id", name=op.f("pk_invoiced_records")),
    )
    with op.batch_alter_table("invoiced_records", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_invoiced_records_invoice_id"), ["invoice_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("invoiced_records", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invoiced_records_invoice_id"))

    op.drop_table("invoiced_records")
