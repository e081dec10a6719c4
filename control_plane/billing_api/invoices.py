"""`GET /api/2.0/billing/invoices`, `GET /api/2.0/billing/invoices/{id}` and the Stripe
webhook `POST /api/2.0/billing/stripe/webhook` (signature-verified; no bearer token: Stripe
signs instead)."""

from __future__ import annotations

import asyncio
import re

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.invoicing import Invoice
from billing.invoicing.models import InvoicedRecord
from billing.records import UsageRecord
from billing.stripe_gateway import WebhookSignatureError, handle_webhook
from control_plane.api.deps import CallerDep, PlaneDep, SessionDep
from control_plane.auth import Caller
from control_plane.billing_api.listing import CSV, billing_scope, listing, storable, wants_csv
from control_plane.billing_api.schemas import (
    InvoiceDetail,
    InvoiceLineList,
    InvoiceList,
    InvoiceRow,
    UsageRecordList,
    UsageRecordRow,
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
    detail = InvoiceDetail.model_validate(_visible_invoice(session, caller, invoice_id))
    if wants_csv(request):
        return listing(request, InvoiceLineList(invoice_lines=detail.lines))
    return Response(detail.model_dump_json(), media_type="application/json")


@router.get(
    "/invoices/{invoice_id}/lines/{line_no}/records",
    response_model=UsageRecordList,
    responses=CSV,
)
def line_records(
    invoice_id: str, line_no: int, request: Request, session: SessionDep, caller: CallerDep
) -> Response:
    """The usage records an invoice line was summed from (`invoiced_records`: every record
    is on exactly one invoice; a line is its invoice's records of one SKU and endpoint), so
    their quantities add up to the line's DBUs. Oldest hour first."""
    found = _visible_invoice(session, caller, invoice_id)
    line = next((item for item in found.lines if item.line_no == line_no), None)
    if line is None:
        raise NotFound(f"invoice {invoice_id!r} has no line {line_no}")
    records = session.scalars(
        select(UsageRecord)
        .join(InvoicedRecord, InvoicedRecord.record_id == UsageRecord.record_id)
        .where(
            InvoicedRecord.invoice_id == found.invoice_id,
            UsageRecord.sku_name == line.sku_name,
            UsageRecord.endpoint_id == line.endpoint_id,
        )
        .order_by(UsageRecord.usage_start_time, UsageRecord.record_id)
    ).all()
    page = UsageRecordList(records=[UsageRecordRow.model_validate(r) for r in records])
    return listing(request, page)


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


def _visible_invoice(session: Session, caller: Caller, invoice_id: str) -> Invoice:
    """The invoice, if the caller may read it; a 404 otherwise (another account's or
    workspace's invoice is as absent as one that does not exist)."""
    if not storable(invoice_id, INVOICE_ID_LENGTH):  # no invoice has it (and NUL: a DB error)
        raise NotFound("no invoice has this id")
    found = session.get(Invoice, invoice_id)
    visible = found is not None and found.account_id == caller.account_id
    if visible and found is not None:
        scope = billing_scope(caller, None)
        visible = scope.workspace_id in (None, found.workspace_id)
    if not visible or found is None:
        raise NotFound(f"invoice {invoice_id!r} does not exist")
    return found
