"""The delivery pass: send due outbox entries to Stripe, at least once, counted once.

`deliver_pending` takes the due `pending` entries in id order and, for each one:

1. claims it in its own short transaction (`attempts + 1`, and `next_attempt_at` pushed a
   lease ahead, so a concurrent or later pass leaves it alone while this one works on it);
2. sends it (creating the workspace's Stripe customer first if it has none);
3. marks it `delivered` — or, on a transient error, leaves it `pending` with exponential
   backoff (`base_backoff × 2^(attempts-1)`, capped at `max_backoff`), or, when Stripe
   rejects the request itself, `failed` (terminal, for an operator).

A process killed between 2 and 3 leaves the entry claimed; once the lease runs out, a later
pass sends it again and Stripe's de-duplication makes that harmless: meter events by
`identifier` (a duplicate is a 400 we count as delivered), invoice items and invoices by
idempotency key and, on any attempt after the first, by first looking them up by the
metadata we attached. Invoice items and invoices of one workspace go strictly in order (an
entry waits for every earlier one of its workspace), because a Stripe invoice takes the
customer's pending items.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, exists, select, update
from sqlalchemy.orm import Session

from billing.invoicing.models import Invoice
from billing.stripe_gateway.gateway import (
    PermanentStripeError,
    StripeGateway,
    TransientStripeError,
)
from billing.stripe_gateway.models import StripeCustomer, StripeOutboxEntry

INVOICE_PATH = ("invoice_item", "invoice")


@dataclass
class DeliveryReport:
    delivered: int = 0
    retrying: int = 0
    failed: int = 0
    blocked: int = 0  # invoice-path entries waiting for an earlier entry of their workspace


def backoff(attempts: int, base: timedelta, cap: timedelta) -> timedelta:
    """Wait after the `attempts`-th failed attempt: base, 2·base, 4·base, … up to `cap`."""
    return min(base * 2 ** min(max(attempts - 1, 0), 32), cap)


def ensure_customer(
    engine: Engine, gateway: StripeGateway, workspace_id: str, account_id: str, now: datetime
) -> str:
    """The workspace's Stripe customer id, created (once) and stored on first use."""
    with Session(engine) as session:
        customer = session.get(StripeCustomer, workspace_id)
        if customer is not None:
            return customer.customer_id
    customer_id = gateway.create_customer(workspace_id, account_id)
    with Session(engine) as session, session.begin():
        session.add(
            StripeCustomer(
                workspace_id=workspace_id,
                customer_id=customer_id,
                account_id=account_id,
                created_at=now,
            )
        )
    return customer_id


def deliver_pending(
    engine: Engine,
    gateway: StripeGateway,
    now: datetime,
    *,
    limit: int = 1000,
    base_backoff: timedelta = timedelta(seconds=30),
    max_backoff: timedelta = timedelta(hours=1),
    lease: timedelta = timedelta(minutes=5),
) -> DeliveryReport:
    """Send up to `limit` due entries; see the module docstring for the guarantees."""
    report = DeliveryReport()
    with Session(engine) as session:
        due = session.execute(
            select(StripeOutboxEntry.id, StripeOutboxEntry.attempts)
            .where(StripeOutboxEntry.status == "pending")
            .where(StripeOutboxEntry.next_attempt_at <= now)
            .order_by(StripeOutboxEntry.id)
            .limit(limit)
        ).all()
    for entry_id, attempts in due:
        if _waits_for_earlier(engine, entry_id):
            report.blocked += 1
            continue
        if not _claim(engine, entry_id, attempts, now + lease):
            continue
        with Session(engine) as session:
            entry = session.get_one(StripeOutboxEntry, entry_id)
            kind, workspace_id, payload = entry.kind, entry.workspace_id, dict(entry.payload)
        try:
            customer_id = ensure_customer(engine, gateway, workspace_id, payload["account_id"], now)
            object_id = _send(gateway, kind, payload, customer_id, entry.idempotency_key, attempts)
        except TransientStripeError as error:
            delay = backoff(attempts + 1, base_backoff, max_backoff)
            _finish(engine, entry_id, "pending", now, error=str(error), retry_at=now + delay)
            report.retrying += 1
            continue
        except PermanentStripeError as error:
            _finish(engine, entry_id, "failed", now, error=str(error))
            report.failed += 1
            continue
        _finish(engine, entry_id, "delivered", now, object_id=object_id, payload=payload)
        report.delivered += 1
    return report


def _waits_for_earlier(engine: Engine, entry_id: int) -> bool:
    with Session(engine) as session:
        entry = session.get_one(StripeOutboxEntry, entry_id)
        if entry.kind not in INVOICE_PATH:
            return False
        earlier = select(StripeOutboxEntry.id).where(
            StripeOutboxEntry.workspace_id == entry.workspace_id,
            StripeOutboxEntry.kind.in_(INVOICE_PATH),
            StripeOutboxEntry.status != "delivered",
            StripeOutboxEntry.id < entry_id,
        )
        return bool(session.scalar(select(exists(earlier))))


def _claim(engine: Engine, entry_id: int, attempts: int, lease_until: datetime) -> bool:
    with Session(engine) as session, session.begin():
        result = session.execute(
            update(StripeOutboxEntry)
            .where(StripeOutboxEntry.id == entry_id)
            .where(StripeOutboxEntry.status == "pending")
            .where(StripeOutboxEntry.attempts == attempts)
            .values(attempts=attempts + 1, next_attempt_at=lease_until)
        )
        return bool(getattr(result, "rowcount", 0) == 1)


def _send(
    gateway: StripeGateway,
    kind: str,
    payload: dict[str, Any],
    customer_id: str,
    key: str,
    earlier_attempts: int,
) -> str:
    if kind == "meter_event":
        return gateway.send_meter_event(
            customer_id=customer_id,
            identifier=payload["record_id"],
            value=Decimal(payload["value"]),
            timestamp=datetime.fromisoformat(payload["timestamp"]),
            idempotency_key=key,
        )
    if kind == "meter_event_cancel":
        return gateway.cancel_meter_event(identifier=payload["corrects"], idempotency_key=key)
    if kind == "invoice_item":
        found = gateway.find_invoice_item(customer_id, key) if earlier_attempts else None
        return found or gateway.create_invoice_item(
            customer_id=customer_id,
            amount_cents=int(payload["amount_cents"]),
            currency=payload["currency"],
            description=payload["description"],
            key=key,
            metadata={"moeserve_invoice_id": payload["invoice_id"]},
        )
    if kind == "invoice":
        invoice_id = payload["invoice_id"]
        found = gateway.find_invoice(customer_id, invoice_id) if earlier_attempts else None
        return found or gateway.create_invoice(
            customer_id=customer_id,
            invoice_id=invoice_id,
            description=f"moeserve usage {payload['period']}",
            key=key,
        )
    raise PermanentStripeError(f"unknown outbox kind {kind!r}")


def _finish(
    engine: Engine,
    entry_id: int,
    status: str,
    now: datetime,
    *,
    error: str | None = None,
    retry_at: datetime | None = None,
    object_id: str | None = None,
    payload: dict[str, Any] | None = None,
) -> None:
    with Session(engine) as session, session.begin():
        entry = session.get_one(StripeOutboxEntry, entry_id)
        entry.status = status
        entry.last_error = error[:2000] if error else None
        if retry_at is not None:
            entry.next_attempt_at = retry_at
        if status == "delivered":
            entry.delivered_at = now
            entry.stripe_object_id = object_id
            if entry.kind == "invoice" and payload is not None:
                invoice = session.get_one(Invoice, payload["invoice_id"])
                invoice.stripe_invoice_id = object_id
                if invoice.status == "draft":
                    invoice.status = "open"
