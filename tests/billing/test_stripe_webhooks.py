"""Webhook handling: Stripe's signature scheme (HMAC-SHA256 over "t.payload", computed here
independently of the SDK), invoice.paid / invoice.payment_failed status updates, and
redelivered events ignored by event id."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from billing.invoicing import Invoice
from billing.stripe_gateway import StripeWebhookEvent, WebhookSignatureError, handle_webhook
from tests.billing.fakes.usage import billing_engine

SECRET = "whsec_test_secret"


@pytest.fixture
def engine() -> Iterator[Engine]:
    with billing_engine() as engine:
        with Session(engine) as session, session.begin():
            session.add(
                Invoice(
                    invoice_id="inv-2026-11-ws1",
                    account_id="acct1",
                    workspace_id="ws1",
                    period="2026-11",
                    currency="usd",
                    status="open",
                    subtotal=Decimal("1.23"),
                    total=Decimal("1.23"),
                    created_at=datetime(2026, 12, 1, tzinfo=UTC),
                    stripe_invoice_id="in_123",
                )
            )
        yield engine


def signed(
    event_id: str, event_type: str, invoice_id: str = "in_123", secret: str = SECRET
) -> tuple[bytes, str]:
    payload = json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": event_type,
            "data": {"object": {"id": invoice_id, "object": "invoice", "metadata": {}}},
        }
    ).encode()
    timestamp = int(time.time())
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return payload, f"t={timestamp},v1={mac.hexdigest()}"


def status(engine: Engine) -> str:
    with Session(engine) as session:
        return session.get_one(Invoice, "inv-2026-11-ws1").status


def test_a_bad_signature_is_rejected_and_changes_nothing(engine: Engine):
    payload, header = signed("evt_1", "invoice.paid", secret="whsec_someone_else")
    with pytest.raises(WebhookSignatureError):
        handle_webhook(engine, payload, header, SECRET)
    payload, header = signed("evt_1", "invoice.paid")
    with pytest.raises(WebhookSignatureError):
        handle_webhook(engine, payload.replace(b"evt_1", b"evt_2"), header, SECRET)
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(StripeWebhookEvent)) == 0
    assert status(engine) == "open"


def test_payment_failed_then_paid_updates_the_invoice(engine: Engine):
    assert handle_webhook(engine, *signed("evt_1", "invoice.payment_failed"), SECRET) == "recorded"
    assert status(engine) == "payment_failed"
    assert handle_webhook(engine, *signed("evt_2", "invoice.paid"), SECRET) == "recorded"
    assert status(engine) == "paid"
    # A late failure (events arrive out of order) never un-pays an invoice.
    handle_webhook(engine, *signed("evt_3", "invoice.payment_failed"), SECRET)
    assert status(engine) == "paid"


def test_a_redelivered_event_is_ignored(engine: Engine):
    payload, header = signed("evt_1", "invoice.payment_failed")
    assert handle_webhook(engine, payload, header, SECRET) == "recorded"
    with Session(engine) as session, session.begin():
        session.get_one(Invoice, "inv-2026-11-ws1").status = "paid"
    assert handle_webhook(engine, payload, header, SECRET) == "duplicate"
    assert status(engine) == "paid"
    with Session(engine) as session:
        (event,) = session.scalars(select(StripeWebhookEvent)).all()
    assert (event.event_id, event.type, event.object_id) == (
        "evt_1",
        "invoice.payment_failed",
        "in_123",
    )
