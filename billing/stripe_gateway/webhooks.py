"""Stripe webhooks: verify, record once, update invoice status.

`handle_webhook` is what the control plane's HTTP route calls with the raw request body and
its `Stripe-Signature` header. Every verified event is stored once by Stripe event id (a
redelivery changes nothing); `invoice.paid` / `invoice.payment_succeeded` mark our invoice
`paid`, `invoice.payment_failed` marks it `payment_failed` (never over `paid`: Stripe does
not deliver events in order). The invoice is found by its Stripe id, or by the
`moeserve_invoice_id` metadata we attach when we create it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billing.invoicing.models import Invoice
from billing.stripe_gateway.gateway import WebhookSignatureError, verify_webhook
from billing.stripe_gateway.models import StripeWebhookEvent

PAID_EVENTS = ("invoice.paid", "invoice.payment_succeeded")
FAILED_EVENTS = ("invoice.payment_failed",)

WebhookOutcome = Literal["recorded", "duplicate"]

__all__ = ["WebhookOutcome", "WebhookSignatureError", "handle_webhook"]


def handle_webhook(
    engine: Engine,
    payload: bytes,
    signature_header: str,
    secret: str,
    *,
    now: datetime | None = None,
) -> WebhookOutcome:
    """Verify and apply one webhook request. Raises `WebhookSignatureError` (answer 400) when
    the signature does not verify; returns "duplicate" for an event already recorded."""
    event = verify_webhook(payload, signature_header, secret)
    received_at = now or datetime.now(UTC)
    obj: dict[str, Any] = (event.get("data") or {}).get("object") or {}
    try:
        with Session(engine) as session, session.begin():
            if session.get(StripeWebhookEvent, event["id"]) is not None:
                return "duplicate"
            session.add(
                StripeWebhookEvent(
                    event_id=event["id"],
                    type=event["type"],
                    object_id=obj.get("id"),
                    received_at=received_at,
                    payload=event,
                )
            )
            if event["type"] in PAID_EVENTS + FAILED_EVENTS:
                _apply_invoice_event(session, event["type"], obj)
    except IntegrityError:  # the same event delivered twice at once: the other one won
        return "duplicate"
    return "recorded"


def _apply_invoice_event(session: Session, event_type: str, obj: dict[str, Any]) -> None:
    invoice = None
    if obj.get("id"):
        invoice = session.scalar(select(Invoice).where(Invoice.stripe_invoice_id == obj["id"]))
    our_id = (obj.get("metadata") or {}).get("moeserve_invoice_id")
    if invoice is None and our_id:
        invoice = session.get(Invoice, our_id)
    if invoice is None:
        return  # not one of ours (or not delivered by us): recorded, nothing to update
    if event_type in PAID_EVENTS:
        invoice.status = "paid"
    elif invoice.status != "paid":
        invoice.status = "payment_failed"
    if invoice.stripe_invoice_id is None and obj.get("id"):
        invoice.stripe_invoice_id = obj["id"]
