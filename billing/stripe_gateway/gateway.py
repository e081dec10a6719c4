"""The one module that talks to Stripe, through the official `stripe` SDK.

Every call pins `STRIPE_API_VERSION` (the version stripe-python 16.1 is generated for, so the
SDK's types match the responses), carries an idempotency key derived from our own ids, and
turns SDK errors into two kinds: `TransientStripeError` (timeouts, connection errors, 429,
5xx, auth/permission problems — retry later, nothing is lost) and `PermanentStripeError`
(Stripe refused the request itself). The SDK's own retries are off (`max_network_retries=0`):
the outbox owns retrying, with backoff that survives restarts.

Stripe de-duplicates a replayed call by idempotency key for 24 hours only, and some Stripe
compatible servers (localstripe) not at all; so before re-sending an invoice item or invoice
the outbox asks `find_invoice_item` / `find_invoice`, which match on the `moeserve_key` /
`moeserve_invoice_id` metadata we attach. Meter events need no lookup: their `identifier` is
our record id and Stripe answers a duplicate with a 400, which `send_meter_event` treats as
delivered.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any

import stripe

# stripe-python 16.1.0's `stripe.api_version`; bump together with the SDK pin in pyproject.
STRIPE_API_VERSION = "2026-10-28.endive"
DEFAULT_METER_EVENT_NAME = "moeserve_dbu"


class TransientStripeError(Exception):
    """Stripe could not be reached or did not answer usefully: try again later."""


class PermanentStripeError(Exception):
    """Stripe rejected the request itself: retrying the same request cannot succeed."""


class WebhookSignatureError(ValueError):
    """A webhook payload whose signature does not verify (or is not a Stripe event)."""


def _is_duplicate_identifier(error: stripe.InvalidRequestError) -> bool:
    message = str(error.user_message or error).lower()
    return error.code == "duplicate_meter_event" or "already exists with identifier" in message


def _metadata(obj: stripe.StripeObject) -> dict[str, Any]:
    metadata = getattr(obj, "metadata", None)
    return metadata.to_dict() if metadata is not None else {}


@contextmanager
def _classified() -> Iterator[None]:
    try:
        yield
    except stripe.InvalidRequestError as error:
        status = error.http_status or 400
        if status == 409 or status >= 500:  # 409: an idempotent request still in flight
            raise TransientStripeError(str(error)) from error
        raise PermanentStripeError(str(error)) from error
    except stripe.StripeError as error:
        # Connection errors, timeouts, 429, 5xx, and auth/permission errors (a key problem is
        # the operator's to fix; the entries stay deliverable).
        raise TransientStripeError(f"{type(error).__name__}: {error}") from error


class StripeGateway:
    """Stripe calls moeserve makes. `api_base` points the SDK at another server (tests:
    localstripe and the meter-event fake); `timeout_s` bounds each HTTP request."""

    def __init__(
        self,
        api_key: str,
        *,
        api_base: str | None = None,
        meter_event_name: str = DEFAULT_METER_EVENT_NAME,
        timeout_s: float = 30.0,
    ) -> None:
        self.meter_event_name = meter_event_name
        self._client = stripe.StripeClient(
            api_key,
            stripe_version=STRIPE_API_VERSION,
            base_addresses={"api": api_base} if api_base else None,
            max_network_retries=0,
            http_client=stripe.new_default_http_client(timeout=timeout_s),
        )

    def create_customer(self, workspace_id: str, account_id: str) -> str:
        """A new customer for a workspace; the key makes a replay within 24 h return it."""
        with _classified():
            customer = self._client.v1.customers.create(
                {
                    "description": f"moeserve workspace {workspace_id}",
                    "metadata": {"moeserve_workspace_id": workspace_id, "account_id": account_id},
                },
                {"idempotency_key": f"moeserve:customer:{workspace_id}"},
            )
        return customer.id

    def send_meter_event(
        self,
        *,
        customer_id: str,
        identifier: str,
        value: Decimal,
        timestamp: datetime,
        idempotency_key: str,
    ) -> str:
        """One `/v1/billing/meter_events` event; `value` travels as an exact decimal string.
        A duplicate-identifier rejection means Stripe already has it: returns `identifier`."""
        params: Any = {
            "event_name": self.meter_event_name,
            "identifier": identifier,
            "timestamp": int(timestamp.timestamp()),
            "payload": {"stripe_customer_id": customer_id, "value": format(value, "f")},
        }
        with _classified():
            try:
                self._client.v1.billing.meter_events.create(
                    params, {"idempotency_key": idempotency_key}
                )
            except stripe.InvalidRequestError as error:
                if not _is_duplicate_identifier(error):
                    raise
        return identifier

    def cancel_meter_event(self, *, identifier: str, idempotency_key: str) -> str:
        """Cancel an earlier meter event by identifier (a RETRACTION in mode a). Stripe
        accepts cancellations within 24 h of the event; later corrections need invoices."""
        params: Any = {
            "event_name": self.meter_event_name,
            "type": "cancel",
            "cancel": {"identifier": identifier},
        }
        with _classified():
            adjustment = self._client.v1.billing.meter_event_adjustments.create(
                params, {"idempotency_key": idempotency_key}
            )
        return str(getattr(adjustment, "id", None) or identifier)

    def find_invoice_item(self, customer_id: str, key: str) -> str | None:
        """The customer's invoice item created with `metadata.moeserve_key == key`, if any."""
        with _classified():
            items = self._client.v1.invoice_items.list({"customer": customer_id, "limit": 100})
            for item in items.auto_paging_iter():
                if _metadata(item).get("moeserve_key") == key:
                    return item.id
        return None

    def create_invoice_item(
        self,
        *,
        customer_id: str,
        amount_cents: int,
        currency: str,
        description: str,
        key: str,
        metadata: dict[str, str],
    ) -> str:
        """A pending invoice item of `amount_cents` (integer minor units, never float)."""
        with _classified():
            item = self._client.v1.invoice_items.create(
                {
                    "customer": customer_id,
                    "amount": amount_cents,
                    "currency": currency,
                    "description": description,
                    "metadata": {**metadata, "moeserve_key": key},
                },
                {"idempotency_key": key},
            )
        return item.id

    def find_invoice(self, customer_id: str, invoice_id: str) -> str | None:
        """The customer's Stripe invoice for our `invoice_id`, if one was created."""
        with _classified():
            invoices = self._client.v1.invoices.list({"customer": customer_id, "limit": 100})
            for invoice in invoices.auto_paging_iter():
                if _metadata(invoice).get("moeserve_invoice_id") == invoice_id:
                    return str(invoice.id)
        return None

    def create_invoice(
        self, *, customer_id: str, invoice_id: str, description: str, key: str
    ) -> str:
        """A Stripe invoice that takes the customer's pending invoice items (ours were all
        created just before, and the outbox sends one workspace's invoices in order)."""
        with _classified():
            invoice = self._client.v1.invoices.create(
                {
                    "customer": customer_id,
                    "description": description,
                    "metadata": {"moeserve_invoice_id": invoice_id},
                    "pending_invoice_items_behavior": "include",
                },
                {"idempotency_key": key},
            )
        return str(invoice.id)


def verify_webhook(payload: bytes, signature_header: str, secret: str) -> dict[str, Any]:
    """The event of a webhook request whose `Stripe-Signature` verifies against `secret`
    (HMAC-SHA256, 5-minute tolerance, the SDK's check), as a plain dict."""
    try:
        event = stripe.Webhook.construct_event(payload, signature_header, secret)
    except stripe.SignatureVerificationError as error:
        raise WebhookSignatureError(f"bad Stripe signature: {error}") from error
    except ValueError as error:
        raise WebhookSignatureError(f"not a Stripe event: {error}") from error
    result: dict[str, Any] = event.to_dict()
    return result
