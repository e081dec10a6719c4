"""Stripe delivery: the one gateway module that calls Stripe (`gateway`, official SDK,
pinned API version), the workspace ↔ customer map, the transactional outbox (`outbox`:
enqueue meter events per usage record — mode a — or invoice items plus the invoice at
period close — mode b), the retrying delivery pass (`delivery.deliver_pending`) and the
signature-verifying webhook handler (`webhooks.handle_webhook`). Never imports
`control_plane`; the Stripe SDK is used only inside `gateway`, and no client exists until a
`StripeGateway` is built."""

from billing.stripe_gateway.delivery import DeliveryReport, backoff, deliver_pending
from billing.stripe_gateway.gateway import (
    STRIPE_API_VERSION,
    PermanentStripeError,
    StripeGateway,
    TransientStripeError,
    WebhookSignatureError,
)
from billing.stripe_gateway.models import StripeCustomer, StripeOutboxEntry, StripeWebhookEvent
from billing.stripe_gateway.outbox import enqueue_invoice, enqueue_meter_events
from billing.stripe_gateway.webhooks import handle_webhook

__all__ = [
    "STRIPE_API_VERSION",
    "DeliveryReport",
    "PermanentStripeError",
    "StripeCustomer",
    "StripeGateway",
    "StripeOutboxEntry",
    "StripeWebhookEvent",
    "TransientStripeError",
    "WebhookSignatureError",
    "backoff",
    "deliver_pending",
    "enqueue_invoice",
    "enqueue_meter_events",
    "handle_webhook",
]
