"""`GET /api/2.0/billing/invoices`, `GET /api/2.0/billing/invoices/{id}` and the Stripe
webhook `POST /api/2.0/billing/stripe/webhook` (signature-verified; no bearer token: Stripe
signs instead)."""

from __future__ import annotations

import asyncio
import re

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import select

from billing.invoicing import Invoice
from billing.stripe_gateway import WebhookSignatureError, handle_webhook
from control_plane.api.deps import CallerDep, PlaneDep, SessionDep
from control_plane.billing_api.listing import CSV, billing_scope, listing, storable, wants_csv
from control_plane.billing_api.schemas import (
    InvoiceDetail,
    InvoiceLineList,
    InvoiceList,
    InvoiceRow,
    WebhookResult,
)
from control_plane.errors import BadRequest, InvalidParameter, NotFound, TemporarilyUnavailable

router = APIRouter(prefix="/api/2.0/billing", tags=["billing"])

_PERIOD = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")  # YYYY-MM, as invoices store it
INVOICE_ID_LENGTH = 64  # the column's width


@router.get("/invoices", response_model=InvoiceList, responses=CSV)
def invoices(
    request: Request,
    session: SessionDep,
    caller: CallerDep,
    workspace_id: str | None = None,
    period: str | None = None,
) -> Response:
    if period is not None and not _PERIOD.fullmatch(period):
        raise InvalidParameter("period must be a calendar month (UTC) as YYYY-MM, e.g. 2026-11")
    scope = billing_scope(caller, workspace_id)
    query = select(Invoice).where(*scope.clause(Invoice.account_id, Invoice.workspace_id))
    if period is not None:
        query = query.where(Invoice.period == period)
    found = session.scalars(query.order_by(Invoice.period, Invoice.workspace_id)).all()
    return listing(request, InvoiceList(invoices=[InvoiceRow.model_validate(i) for i in found]))


@router.get("/invoices/{invoice_id}", response_model=InvoiceDetail, responses=CSV)
def invoice(invoice_id: str, request: Request, session: SessionDep, caller: CallerDep) -> Response:
    """One invoice with its lines; CSV lists the lines."""
    if not storable(invoice_id, INVOICE_ID_LENGTH):  # no invoice has it (and NUL: a DB error)
        raise NotFound("no invoice has this id")
    found = session.get(Invoice, invoice_id)
    visible = found is not None and found.account_id == caller.account_id
    if visible and found is not None:
        scope = billing_scope(caller, None)
        visible = scope.workspace_id in (None, found.workspace_id)
    if not visible or found is None:
        raise NotFound(f"invoice {invoice_id!r} does not exist")
    detail = InvoiceDetail.model_validate(found)
    if wants_csv(request):
        return listing(request, InvoiceLineList(invoice_lines=detail.lines))
    return Response(detail.model_dump_json(), media_type="application/json")


@router.post("/stripe/webhook", response_model=WebhookResult)
async def stripe_webhook(request: Request, plane: PlaneDep) -> WebhookResult:
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
    return WebhookResult(result=outcome)
