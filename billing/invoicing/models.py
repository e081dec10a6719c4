"""The `invoices` and `invoice_lines` tables: one invoice per workspace and calendar month
(UTC), one line per (SKU, endpoint). Rows are written once, at period close, and never
re-rated; only `status` and `stripe_invoice_id` change afterwards (Stripe delivery, webhooks).

Money is `Numeric(20, 2)`: a line's `amount` is its exact DBU sum × $/DBU rounded once to the
cent (ROUND_HALF_EVEN), and `subtotal`/`total` are sums of those rounded amounts.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from billing.db import BillingBase, Dbu, DollarsPerDbu, Money

INVOICE_STATUSES = ("draft", "open", "paid", "payment_failed")


def invoice_id_for(workspace_id: str, period: str) -> str:
    """The invoice id of a workspace's period: derived, so closing twice finds the same row."""
    return f"inv-{period}-{workspace_id}"


class Invoice(BillingBase):
    """A workspace's invoice for one period. `status`: `draft` while its Stripe delivery is
    queued, `open` once issued (delivered, or closed without Stripe), then `paid` or
    `payment_failed` from Stripe's webhooks."""

    __tablename__ = "invoices"

    invoice_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(32))
    workspace_id: Mapped[str] = mapped_column(String(32))
    period: Mapped[str] = mapped_column(String(7))  # YYYY-MM (UTC calendar month)
    currency: Mapped[str] = mapped_column(String(3))  # ISO 4217, lower case as Stripe uses
    status: Mapped[str] = mapped_column(String(16))
    subtotal: Mapped[Money]
    total: Mapped[Money]
    rate_card_version: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    stripe_invoice_id: Mapped[str | None] = mapped_column(String(255), index=True)

    lines: Mapped[list[InvoiceLine]] = relationship(
        back_populates="invoice", order_by="InvoiceLine.line_no", lazy="selectin"
    )

    __table_args__ = (UniqueConstraint("workspace_id", "period"),)


class InvoicedRecord(BillingBase):
    """Which invoice billed each usage record: a record is invoiced exactly once, by the
    first period close at or after its hour (late corrections land on a later invoice)."""

    __tablename__ = "invoiced_records"

    record_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    invoice_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("invoices.invoice_id"), index=True
    )


class InvoiceLine(BillingBase):
    """One (SKU, endpoint) of an invoice: `dbu` is the exact sum of every usage record of the
    period (corrections included), `amount` = round_half_even(dbu × dollars_per_dbu, cent)."""

    __tablename__ = "invoice_lines"

    invoice_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("invoices.invoice_id"), primary_key=True
    )
    line_no: Mapped[int] = mapped_column(Integer, primary_key=True)  # 1.., by (sku, endpoint)
    sku_name: Mapped[str] = mapped_column(String(128))
    endpoint_id: Mapped[str] = mapped_column(String(32))
    endpoint_name: Mapped[str] = mapped_column(String(63))
    usage_type: Mapped[str] = mapped_column(String(16))
    dbu: Mapped[Dbu]
    dollars_per_dbu: Mapped[DollarsPerDbu]
    amount: Mapped[Money]

    invoice: Mapped[Invoice] = relationship(back_populates="lines")
