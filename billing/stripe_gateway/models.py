"""Stripe bookkeeping tables: the workspace ↔ customer map, the delivery outbox and the
received webhook events.

The outbox (`stripe_outbox`) is written in the same transaction as what it delivers (usage
records, a closed invoice), so nothing is lost while Stripe is down; `idempotency_key` is
derived from our own ids (never a fresh uuid per attempt) and is unique, so enqueuing twice
is a no-op and every retry of an entry carries the same key.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from billing.db import BillingBase

OUTBOX_KINDS = ("meter_event", "meter_event_cancel", "invoice_item", "invoice")
OUTBOX_STATUSES = ("pending", "delivered", "failed")


class StripeCustomer(BillingBase):
    """A workspace's Stripe customer, created once and kept."""

    __tablename__ = "stripe_customers"

    workspace_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(255), unique=True)
    account_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime]


class StripeOutboxEntry(BillingBase):
    """One Stripe call to make. `pending` entries are due at `next_attempt_at`; transient
    failures back off exponentially and stay `pending`; `failed` is terminal (Stripe refused
    the request itself) and waits for an operator; `delivered` records `stripe_object_id`."""

    __tablename__ = "stripe_outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    workspace_id: Mapped[str] = mapped_column(String(32), index=True)
    payload: Mapped[dict[str, Any]]
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    last_error: Mapped[str | None] = mapped_column(Text)
    stripe_object_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]


class StripeWebhookEvent(BillingBase):
    """A verified webhook event, kept once per Stripe event id (redeliveries are ignored)."""

    __tablename__ = "stripe_webhook_events"

    event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(64))
    object_id: Mapped[str | None] = mapped_column(String(255))
    received_at: Mapped[datetime]
    payload: Mapped[dict[str, Any]]
