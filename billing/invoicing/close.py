"""Closing a billing period: one invoice per workspace for a UTC calendar month.

Each invoice has one line per (SKU, endpoint): `dbu` is the exact Decimal sum of every usage
record not invoiced yet whose hour starts before the period's end — ORIGINAL, RETRACTION and
RESTATEMENT alike, so corrections net out — and `amount = line_amount(dbu, dollars_per_dbu)`,
rounded once to the cent (ROUND_HALF_EVEN). The invoice total is the sum of the rounded
lines, so it reconciles exactly with the records and with the lines a customer sees.

Every record is invoiced exactly once (`invoiced_records`): usage or corrections that arrive
for a month after its invoice was closed are billed on the next month's invoice (a line may
then be negative: a credit), never lost and never billed twice. Close months in order.

$/DBU comes from the rate card in effect at the period's start, for the deployment's cloud,
region class and tier (rate-card changes take effect on period boundaries).

Closing is idempotent: the invoice id derives from (workspace, period) and an existing
invoice is returned as it is, never re-rated; closing again only adds invoices for
workspaces that had none.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from billing.invoicing.models import Invoice, InvoicedRecord, InvoiceLine, invoice_id_for
from billing.placements import load_placements
from billing.pricing import line_amount
from billing.records import UsageRecord
from billing.skus import region_class

PERIOD_PATTERN = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


class InvalidPeriodError(ValueError):
    """A period that is not `YYYY-MM`."""


class PeriodNotEndedError(ValueError):
    """The period has not ended yet: its usage is not final."""


class _RateCard(Protocol):
    def dollars_per_dbu(self, cloud: str, region_class: str, tier: str) -> Decimal: ...


class RateCardsLike(Protocol):
    """What closing needs of `billing.ratecard.RateCards`."""

    def at(self, moment: datetime) -> _RateCard: ...


OnInvoice = Callable[[Session, Invoice, datetime], object]


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """[start, end) of a `YYYY-MM` period, in UTC."""
    match = PERIOD_PATTERN.match(period)
    if match is None:
        raise InvalidPeriodError(f"period must be YYYY-MM (e.g. 2026-11), got {period!r}")
    year, month = int(match.group(1)), int(match.group(2))
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return start, end


@dataclass
class _LineSum:
    endpoint_name: str
    usage_type: str
    dbu: Decimal = Decimal(0)


@dataclass
class _WorkspaceUsage:
    account_id: str
    lines: dict[tuple[str, str], _LineSum] = field(default_factory=dict)
    record_ids: list[str] = field(default_factory=list)


def close_period(
    engine: Engine,
    period: str,
    rate_cards: RateCardsLike,
    cloud: str,
    region: str,
    tier: str,
    now: datetime,
    *,
    currency: str | None = None,
    on_invoice: OnInvoice | None = None,
) -> list[Invoice]:
    """Invoice every workspace with usage in `period` (see the module docstring); returns
    the period's invoices (new and existing) by workspace id, lines loaded.

    `on_invoice(session, invoice, now)` runs for each new invoice inside the transaction
    that writes it — e.g. `billing.stripe_gateway.enqueue_invoice` — and new invoices start
    `draft` (awaiting that delivery) instead of `open`. `currency` defaults to the rate
    card's `currency_code` (lower case, as Stripe spells it)."""
    start, end = period_bounds(period)
    if now < end:
        raise PeriodNotEndedError(
            f"period {period} ends at {end.isoformat()}; it cannot be closed before then "
            f"(now is {now.isoformat()})"
        )
    card = rate_cards.at(start)
    rate_card_version = getattr(card, "version", None)
    currency = (currency or getattr(card, "currency_code", None) or "usd").lower()
    with Session(engine, expire_on_commit=False) as session, session.begin():
        # Each workspace is priced where it lives (its cloud and region class).
        placements = load_placements(session.connection(), cloud, region)
        invoices = {
            invoice.workspace_id: invoice
            for invoice in session.scalars(select(Invoice).where(Invoice.period == period))
        }
        for workspace_id, usage in sorted(_usage(session, end).items()):
            if workspace_id in invoices:
                continue
            where_cloud, where_region = placements.of(workspace_id)
            dollars_per_dbu = card.dollars_per_dbu(where_cloud, region_class(where_region), tier)
            invoice = _build_invoice(workspace_id, usage, period, dollars_per_dbu, currency, now)
            invoice.rate_card_version = rate_card_version and str(rate_card_version)
            invoice.status = "draft" if on_invoice is not None else "open"
            session.add(invoice)
            session.flush()
            session.add_all(
                InvoicedRecord(record_id=record_id, invoice_id=invoice.invoice_id)
                for record_id in usage.record_ids
            )
            if on_invoice is not None:
                on_invoice(session, invoice, now)
            invoices[workspace_id] = invoice
        return [invoices[workspace_id] for workspace_id in sorted(invoices)]


def _usage(session: Session, end: datetime) -> dict[str, _WorkspaceUsage]:
    """Every record not invoiced yet whose hour starts before `end`, by workspace and line."""
    invoiced = select(InvoicedRecord.record_id).where(
        InvoicedRecord.record_id == UsageRecord.record_id
    )
    statement = (
        select(
            UsageRecord.record_id,
            UsageRecord.workspace_id,
            UsageRecord.account_id,
            UsageRecord.sku_name,
            UsageRecord.endpoint_id,
            UsageRecord.usage_metadata,
            UsageRecord.usage_type,
            UsageRecord.usage_quantity,
        )
        .where(UsageRecord.usage_start_time < end, ~invoiced.exists())
        .where(UsageRecord.workspace_id.is_not(None))
        .execution_options(yield_per=10_000)
    )
    by_workspace: dict[str, _WorkspaceUsage] = {}
    for (
        record_id,
        workspace_id,
        account_id,
        sku,
        endpoint_id,
        metadata,
        usage_type,
        quantity,
    ) in session.execute(statement):
        usage = by_workspace.setdefault(workspace_id, _WorkspaceUsage(account_id))
        usage.record_ids.append(record_id)
        line = usage.lines.get((sku, endpoint_id))
        if line is None:
            line = _LineSum(_endpoint_name(metadata, endpoint_id), usage_type)
            usage.lines[(sku, endpoint_id)] = line
        line.dbu += quantity
    return by_workspace


def _endpoint_name(metadata: dict[str, Any] | None, endpoint_id: str) -> str:
    return str((metadata or {}).get("endpoint_name") or endpoint_id)


def _build_invoice(
    workspace_id: str,
    usage: _WorkspaceUsage,
    period: str,
    dollars_per_dbu: Decimal,
    currency: str,
    now: datetime,
) -> Invoice:
    invoice_id = invoice_id_for(workspace_id, period)
    lines = [
        InvoiceLine(
            invoice_id=invoice_id,
            line_no=line_no,
            sku_name=sku,
            endpoint_id=endpoint_id,
            endpoint_name=line.endpoint_name,
            usage_type=line.usage_type,
            dbu=line.dbu,
            dollars_per_dbu=dollars_per_dbu,
            amount=line_amount(line.dbu, dollars_per_dbu),
        )
        for line_no, ((sku, endpoint_id), line) in enumerate(sorted(usage.lines.items()), 1)
    ]
    total = sum((line.amount for line in lines), Decimal("0.00"))
    return Invoice(
        invoice_id=invoice_id,
        account_id=usage.account_id,
        workspace_id=workspace_id,
        period=period,
        currency=currency,
        subtotal=total,
        total=total,
        created_at=now,
        lines=lines,
    )
