"""Period close on PostgreSQL: one line per (SKU, endpoint), DBU × $/DBU rounded once per
line (ROUND_HALF_EVEN), totals = Σ rounded lines, corrections net out, idempotent close."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from billing.invoicing import (
    InvalidPeriodError,
    Invoice,
    InvoicedRecord,
    InvoiceLine,
    PeriodNotEndedError,
    close_period,
)
from billing.ratecard import load_rate_cards
from tests.billing.fakes.usage import NOW, billing_engine, usage_record

NOV = datetime(2026, 11, 3, 14, tzinfo=UTC)
RATE = Decimal("0.07")  # aws us-east-1 PREMIUM in the shipped rate card
DBRX_REQUEST = (20 * Decimal("10.714") + 16 * Decimal("32.143")) / 1_000_000  # docs/pricing.md


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    with billing_engine() as engine:
        yield engine


def close(engine: Engine, period: str = "2026-11", now: datetime = NOW) -> list[Invoice]:
    return close_period(engine, period, load_rate_cards(), "aws", "us-east-1", "PREMIUM", now)


def cents(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)


def test_lines_per_sku_and_endpoint_are_rounded_once_and_sum_to_the_total(engine: Engine):
    records = [
        usage_record(hour=NOV + timedelta(hours=h), dbu=DBRX_REQUEST * 1000) for h in range(5)
    ]
    records += [usage_record(hour=NOV, dbu="0.0714285", endpoint_id="ep2", workspace_id="ws1")]
    # A corrected hour: ORIGINAL 3, RETRACTION -3, RESTATEMENT 2 -> the line counts 2.
    original = usage_record(hour=NOV, dbu="3", endpoint_id="ep3")
    records += [
        original,
        usage_record(
            hour=NOV,
            dbu="-3",
            endpoint_id="ep3",
            record_type="RETRACTION",
            corrects=original.record_id,
        ),
        usage_record(hour=NOV, dbu="2", endpoint_id="ep3", record_type="RESTATEMENT"),
        usage_record(hour=datetime(2026, 12, 1, tzinfo=UTC), dbu="100"),  # next period
        usage_record(hour=datetime(2026, 10, 31, 23, tzinfo=UTC), dbu="100"),  # previous
    ]
    with Session(engine) as session, session.begin():
        session.add_all(records)

    # October is closed first: its record is billed there, once.
    close(engine, "2026-10", now=datetime(2026, 11, 1, 1, tzinfo=UTC))
    (invoice,) = [i for i in close(engine) if i.workspace_id == "ws1"]

    assert [(line.endpoint_id, line.dbu) for line in invoice.lines] == [
        ("ep1", DBRX_REQUEST * 5000),
        ("ep2", Decimal("0.0714285")),
        ("ep3", Decimal(2)),
    ]
    # 0.0714285 DBU × 0.07 = $0.004999995: half a cent is never reached, the line is $0.00.
    assert [line.amount for line in invoice.lines] == [
        cents(DBRX_REQUEST * 5000 * RATE),
        Decimal("0.00"),
        Decimal("0.14"),
    ]
    assert invoice.total == sum(line.amount for line in invoice.lines) == Decimal("0.39")
    assert invoice.invoice_id == "inv-2026-11-ws1" and invoice.status == "open"
    assert invoice.currency == "usd" and invoice.rate_card_version == "2024-03-27"
    assert all(line.dollars_per_dbu == RATE for line in invoice.lines)


def test_usage_arriving_after_a_close_is_billed_once_on_the_next_invoice(engine: Engine):
    """A correction of May that arrives after May was invoiced lands on June's invoice:
    every record is invoiced exactly once, and a net decrease is a credit line."""
    may, june = datetime(2026, 5, 4, 9, tzinfo=UTC), datetime(2026, 6, 2, 9, tzinfo=UTC)
    original = usage_record(hour=may, dbu="5", workspace_id="wsl", endpoint_id="epl")
    with Session(engine, expire_on_commit=False) as session, session.begin():
        session.add(original)
    [may_invoice] = [i for i in close(engine, "2026-05", june) if i.workspace_id == "wsl"]
    late = [
        usage_record(
            hour=may,
            dbu="-5",
            workspace_id="wsl",
            endpoint_id="epl",
            record_type="RETRACTION",
            corrects=original.record_id,
            seq=1,
        ),
        usage_record(
            hour=may,
            dbu="3",
            workspace_id="wsl",
            endpoint_id="epl",
            record_type="RESTATEMENT",
            seq=1,
        ),
    ]
    with Session(engine, expire_on_commit=False) as session, session.begin():
        session.add_all(late)
    july = datetime(2026, 7, 1, 1, tzinfo=UTC)
    [june_invoice] = [i for i in close(engine, "2026-06", july) if i.workspace_id == "wsl"]
    assert [line.dbu for line in may_invoice.lines] == [Decimal(5)]
    assert [line.dbu for line in june_invoice.lines] == [Decimal(-2)]  # a credit
    assert june_invoice.total == cents(Decimal(-2) * RATE) == Decimal("-0.14")
    with Session(engine) as session:
        billed = session.execute(
            select(InvoicedRecord.record_id, InvoicedRecord.invoice_id).where(
                InvoicedRecord.record_id.in_([original.record_id, *(r.record_id for r in late)])
            )
        ).all()
    assert sorted(invoice for _, invoice in billed) == [
        "inv-2026-05-wsl",
        "inv-2026-06-wsl",
        "inv-2026-06-wsl",
    ]
    # May and June together bill exactly the corrected total, 3 DBU.
    assert may_invoice.total + june_invoice.total == cents(Decimal(3) * RATE)


def test_closing_twice_returns_the_same_invoices_and_adds_nothing(engine: Engine):
    with Session(engine) as session, session.begin():
        session.add(
            usage_record(hour=datetime(2026, 9, 2, tzinfo=UTC), dbu="1", workspace_id="ws9")
        )
    first = close(engine, "2026-09")
    second = close(engine, "2026-09", now=NOW + timedelta(days=3))
    assert [(i.invoice_id, i.total, i.created_at) for i in first] == [
        (i.invoice_id, i.total, i.created_at) for i in second
    ]
    with Session(engine) as session:
        count = session.scalar(
            select(func.count()).select_from(Invoice).where(Invoice.period == "2026-09")
        )
        lines = session.scalar(
            select(func.count())
            .select_from(InvoiceLine)
            .where(InvoiceLine.invoice_id == "inv-2026-09-ws9")
        )
    assert (count, lines) == (1, 1)


def test_a_period_cannot_be_closed_before_it_ends(engine: Engine):
    with pytest.raises(PeriodNotEndedError, match="2026-12 ends at 2027-01-01"):
        close(engine, "2026-12", now=datetime(2026, 12, 31, 23, 59, tzinfo=UTC))
    with pytest.raises(InvalidPeriodError, match="YYYY-MM"):
        close(engine, "2026-13")


EXAMPLES = itertools.count()
amounts = st.decimals(min_value=Decimal("0"), max_value=Decimal("500"), places=9)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    usage=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 2), amounts), min_size=1, max_size=30
    ),
    year=st.just(2025),
    month=st.integers(1, 12),
)
def test_property_lines_sum_to_the_total_for_random_usage(engine: Engine, usage, year, month):
    period = f"{year}-{month:02d}"
    start = datetime(year, month, 1, tzinfo=UTC)
    workspace_id = f"wsp{next(EXAMPLES)}"  # a workspace of its own per example
    with Session(engine) as session, session.begin():
        session.add_all(
            usage_record(
                hour=start + timedelta(hours=i),
                dbu=dbu,
                workspace_id=workspace_id,
                endpoint_id=f"ep{endpoint}",
                sku_name=f"SKU_{sku}",
            )
            for i, (endpoint, sku, dbu) in enumerate(usage)
        )
    (invoice,) = [i for i in close(engine, period) if i.workspace_id == workspace_id]
    expected: dict[tuple[str, str], Decimal] = {}
    for endpoint, sku, dbu in usage:
        key = (f"SKU_{sku}", f"ep{endpoint}")
        expected[key] = expected.get(key, Decimal(0)) + dbu
    assert {(line.sku_name, line.endpoint_id): line.dbu for line in invoice.lines} == expected
    assert all(line.amount == cents(line.dbu * RATE) for line in invoice.lines)
    assert invoice.total == invoice.subtotal == sum(line.amount for line in invoice.lines)
