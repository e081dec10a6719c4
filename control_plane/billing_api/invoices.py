"""`GET /api/2.0/billing/invoices`, `GET /api/2.0/billing/invoices/{id}` and the Stripe
webhook `POST /api/2.0/billing/stripe/webhook` (signature-verified; no bearer token: Stripe
signs instead)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import select

from billing.invoicing import Invoice
from billing.stripe_gateway import WebhookSignatureError, handle_webhook
from control_plane.api.deps import CallerDep, PlaneDep, SessionDep
from control_plane.billing_api.listing import billing_scope, listing, plain
from control_plane.errors import BadRequest, NotFound, TemporarilyUnavailable

router = APIRouter(prefix="/api/2.0/billing", tags=["billing"])

INVOICE_COLUMNS = [
    "invoice_id",
    "account_id",
    "workspace_id",
    "period",
    "currency",
    "status",
    "subtotal",
    "total",
    "rate_card_version",
    "created_at",
    "stripe_invoice_id",
]
LINE_COLUMNS = [
    "line_no",
    "sku_name",
    "endpoint_id",
    "endpoint_name",
    "usage_type",
    "dbu",
    "dollars_per_dbu",
    "amount",
]


def _invoice(invoice: Invoice, *, with_lines: bool) -> dict[str, Any]:
    row = {column: getattr(invoice, column) for column in INVOICE_COLUMNS}
    if with_lines:
        row["lines"] = [{c: getattr(line, c) for c in LINE_COLUMNS} for line in invoice.lines]
    return row


@router.get("/invoices")
def invoices(
    request: Request,
    session: SessionDep,
    caller: CallerDep,
    workspace_id: str | None = None,
    period: str | None = None,
) -> Response:
    scope = billing_scope(caller, workspace_id)
    query = select(Invoice).where(*scope.clause(Invoice.account_id, Invoice.workspace_id))
    if period is not None:
        query = query.where(Invoice.period == period)
    found = session.scalars(query.order_by(Invoice.period, Invoice.workspace_id)).all()
    rows = [_invoice(invoice, with_lines=False) for invoice in found]
    return listing(request, "invoices", rows, INVOICE_COLUMNS)


@router.get("/invoices/{invoice_id}")
def invoice(invoice_id: str, request: Request, session: SessionDep, caller: CallerDep) -> Any:
    """One invoice with its lines; CSV lists the lines."""
    found = session.get(Invoice, invoice_id)
    visible = found is not None and found.account_id == caller.account_id
    if visible and found is not None:
        scope = billing_scope(caller, None)
        visible = scope.workspace_id in (None, found.workspace_id)
    if not visible or found is None:
        raise NotFound(f"invoice {invoice_id!r} does not exist")
    body = _invoice(found, with_lines=True)
    if request.query_params.get("format") == "csv" or "text/csv" in request.headers.get(
        "accept", ""
    ):
        return listing(request, "invoice_lines", body["lines"], LINE_COLUMNS)
    return plain(body)


@router.post("/stripe/webhook")
async def stripe_webhook(request: Request, plane: PlaneDep) -> dict[str, str]:
    secret = plane.settings.billing.stripe_webhook_secret
    if secret is None:
        raise TemporarilyUnavailable("Stripe webhooks are not configured on this installation")
    payload = await request.body()
    signature = request.headers.get("stripe-signature", "")
    try:
        outcome = await asyncio.to_thread(
            handle_webhook, plane.engine, payload, signature, secret.get_secret_value()
        )
    except WebhookSignatureError as exc:
        raise BadRequest(f"webhook rejected: {exc}") from None
    return {"result": outcome}
