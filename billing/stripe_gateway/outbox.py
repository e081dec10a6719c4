"""Enqueuing Stripe deliveries, in the caller's transaction.

Call these inside the same session (transaction) that writes what they deliver — the hourly
usage records, a closed invoice — so a record is never committed without its delivery, and a
delivery never without its record. Keys are derived from our ids:

- `moeserve:meter_event:{record_id}` — mode (a), one meter event per usage record, whose
  Stripe `identifier` is the record id; a RETRACTION record becomes a `meter_event_cancel`
  of the record it corrects (`corrects`).
- `moeserve:invoice_item:{invoice_id}:{line_no}` and `moeserve:invoice:{invoice_id}` —
  mode (b), at period close: one invoice item per invoice line (amount in cents), then the
  invoice.

Enqueuing an already-enqueued key is a no-op, so a rerun of the job that produced the rows
enqueues nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.invoicing.models import Invoice
from billing.records import UsageRecord
from billing.stripe_gateway.models import StripeOutboxEntry

CENT = Decimal("0.01")


def meter_event_key(record_id: str) -> str:
    return f"moeserve:meter_event:{record_id}"


def invoice_item_key(invoice_id: str, line_no: int) -> str:
    return f"moeserve:invoice_item:{invoice_id}:{line_no}"


def invoice_key(invoice_id: str) -> str:
    return f"moeserve:invoice:{invoice_id}"


def to_cents(amount: Decimal) -> int:
    """Whole minor units of a 2-decimal amount (already rounded once, at the invoice line)."""
    cents = amount * 100
    if cents != cents.to_integral_value():
        raise ValueError(f"{amount} is not a whole number of cents")
    return int(cents)


def _add_new(session: Session, entries: list[StripeOutboxEntry]) -> int:
    keys = [entry.idempotency_key for entry in entries]
    existing: set[str] = set()
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        existing.update(
            session.scalars(
                select(StripeOutboxEntry.idempotency_key).where(
                    StripeOutboxEntry.idempotency_key.in_(chunk)
                )
            )
        )
    new = [entry for entry in entries if entry.idempotency_key not in existing]
    session.add_all(new)
    session.flush()
    return len(new)


def _entry(
    kind: str, workspace_id: str, key: str, payload: dict[str, Any], now: datetime
) -> StripeOutboxEntry:
    return StripeOutboxEntry(
        kind=kind,
        workspace_id=workspace_id,
        payload=payload,
        idempotency_key=key,
        status="pending",
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )


def enqueue_meter_events(session: Session, records: Iterable[UsageRecord], now: datetime) -> int:
    """Queue one meter event (or cancellation, for a RETRACTION) per record; returns how
    many were new. Records without a workspace have no Stripe customer and are skipped."""
    entries = []
    for record in records:
        if record.workspace_id is None:
            continue
        payload = {
            "record_id": record.record_id,
            "account_id": record.account_id,
            "value": format(record.usage_quantity, "f"),
            "timestamp": record.usage_start_time.isoformat(),
            "corrects": record.corrects,
        }
        kind = "meter_event_cancel" if record.record_type == "RETRACTION" else "meter_event"
        if kind == "meter_event_cancel" and record.corrects is None:
            raise ValueError(f"RETRACTION {record.record_id} does not name the record it cancels")
        key = meter_event_key(record.record_id)
        entries.append(_entry(kind, record.workspace_id, key, payload, now))
    return _add_new(session, entries)


def enqueue_invoice(session: Session, invoice: Invoice, now: datetime) -> int:
    """Queue a closed invoice for Stripe: its lines as invoice items, then the invoice."""
    entries = []
    for line in invoice.lines:
        payload = {
            "invoice_id": invoice.invoice_id,
            "account_id": invoice.account_id,
            "line_no": line.line_no,
            "amount_cents": to_cents(line.amount),
            "currency": invoice.currency,
            "description": f"{line.sku_name} · {line.endpoint_name} · {invoice.period}: "
            f"{format(line.dbu, 'f')} DBU × ${format(line.dollars_per_dbu, 'f')}/DBU",
        }
        key = invoice_item_key(invoice.invoice_id, line.line_no)
        entries.append(_entry("invoice_item", invoice.workspace_id, key, payload, now))
    payload = {
        "invoice_id": invoice.invoice_id,
        "account_id": invoice.account_id,
        "period": invoice.period,
        "total_cents": to_cents(invoice.total),
    }
    key = invoice_key(invoice.invoice_id)
    entries.append(_entry("invoice", invoice.workspace_id, key, payload, now))
    return _add_new(session, entries)
