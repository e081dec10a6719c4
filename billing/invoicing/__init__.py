"""Invoices: the `invoices` / `invoice_lines` tables (`models`) and period close
(`close.close_period`): one invoice per workspace and UTC month, one line per (SKU,
endpoint), DBU × $/DBU rounded once per line (ROUND_HALF_EVEN to the cent), totals that are
the sum of the rounded lines. Delivery to Stripe lives in `billing.stripe_gateway`."""

from billing.invoicing.close import (
    InvalidPeriodError,
    PeriodNotEndedError,
    RateCardsLike,
    close_period,
    period_bounds,
)
from billing.invoicing.models import (
    INVOICE_STATUSES,
    Invoice,
    InvoicedRecord,
    InvoiceLine,
    invoice_id_for,
)

__all__ = [
    "INVOICE_STATUSES",
    "InvalidPeriodError",
    "Invoice",
    "InvoiceLine",
    "InvoicedRecord",
    "PeriodNotEndedError",
    "RateCardsLike",
    "close_period",
    "invoice_id_for",
    "period_bounds",
]
