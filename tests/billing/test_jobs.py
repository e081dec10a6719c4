"""The billing jobs: metering prices each usage row by the model family the row carries
(a mixtral row at mixtral's rates, whatever else the endpoint served); with Stripe meter
events on, a record and its meter event are stored in one transaction — a failure while
queueing the events stores neither; tags come from billing's own table."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from billing.jobs import BillingJobs
from billing.ratecard import load_rate_cards
from billing.settings import BillingSettings
from billing.stripe_gateway import StripeOutboxEntry
from billing.tags import record_tags
from tests.billing.test_metering_helpers import (
    DBRX_IN,
    DBRX_OUT,
    USAGE,
    at,
    insert,
    migrated_engine,
    records,
    total,
    usage_row,
)

MIXTRAL_IN, MIXTRAL_OUT = Decimal("7.143"), Decimal("14.286")


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Engine]:
    yield from migrated_engine(request.param, tmp_path)


def jobs(engine: Engine, **settings: Any) -> BillingJobs:
    return BillingJobs(engine, BillingSettings(**settings), "local", load_rate_cards())


def test_rows_are_priced_by_the_family_they_carry(engine: Engine) -> None:
    insert(
        engine,
        USAGE,
        [
            usage_row("d", at(9, 5), 1000, 100),
            usage_row(
                "m",
                at(9, 6),
                2000,
                200,
                served_entity_id="mixtral-tiny-1",
                entity_name="mixtral-tiny",
                model_family="mixtral",
            ),
        ],
    )
    with Session(engine) as session:
        record_tags(session, "ep-chat", {"team": "search"}, at(8))
        session.commit()
    jobs(engine).meter(at(11))
    stored = records(engine, usage_type="TOKEN")
    expected = (1000 * DBRX_IN + 100 * DBRX_OUT + 2000 * MIXTRAL_IN + 200 * MIXTRAL_OUT) / 10**6
    assert total(stored) == expected
    assert {r["served_entity_name"] for r in stored} == {"dbrx-tiny-1", "mixtral-tiny-1"}
    assert all(r["custom_tags"] == {"team": "search"} for r in stored)


def _outbox(engine: Engine) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(StripeOutboxEntry)) or 0


def test_meter_events_are_queued_in_the_transaction_that_stores_their_records(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert(engine, USAGE, [usage_row(f"r{i}", at(9, i), 100, 10) for i in range(5)])
    metered = jobs(engine, stripe_api_key=SecretStr("sk_test_x"), stripe_delivery="meter_events")

    def broken(*args: Any) -> None:
        raise RuntimeError("the outbox is unavailable")

    monkeypatch.setattr("billing.jobs.enqueue_meter_events", broken)
    with pytest.raises(RuntimeError, match="outbox"):
        metered.meter(at(11))
    assert records(engine) == [] and _outbox(engine) == 0  # neither without the other

    monkeypatch.undo()
    report = metered.meter(at(11))
    assert report.originals == len(records(engine)) == _outbox(engine) > 0
    metered.meter(at(11))  # a rerun stores and queues nothing more
    assert len(records(engine)) == _outbox(engine) == report.originals


def test_without_meter_events_nothing_is_queued(engine: Engine) -> None:
    insert(engine, USAGE, [usage_row("r", at(9), 100, 10)])
    jobs(engine, stripe_api_key=SecretStr("sk_test_x"), stripe_delivery="invoices").meter(at(11))
    assert records(engine) and _outbox(engine) == 0
