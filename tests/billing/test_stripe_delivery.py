"""Stripe delivery through the outbox, against localstripe (mode b: invoice items + invoice)
and our own fake of Stripe's meter-event routes (mode a; localstripe has no meters — see
tests/billing/fakes/stripe_front.py), with injected 500s, timeouts (Stripe acted, the client
never heard) and a process killed mid-pass. Each ends with everything delivered exactly once,
checked against the fake's and localstripe's own state."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import stripe
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from billing.invoicing import close_period
from billing.ratecard import load_rate_cards
from billing.stripe_gateway import (
    StripeCustomer,
    StripeGateway,
    StripeOutboxEntry,
    deliver_pending,
    enqueue_invoice,
    enqueue_meter_events,
)
from tests.billing.fakes.stripe_front import StripeFront
from tests.billing.fakes.usage import NOW, billing_engine, usage_record
from tests.conftest import REPO_ROOT

NOV = datetime(2026, 11, 3, 14, tzinfo=UTC)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def localstripe_url() -> Iterator[str]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.billing.fakes.localstripe_launcher", str(port)],
        cwd=REPO_ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(
                    urllib.request.Request(f"{url}/_config/data", method="DELETE")
                )
                break
            except OSError:
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def front(localstripe_url: str) -> Iterator[StripeFront]:
    urllib.request.urlopen(
        urllib.request.Request(f"{localstripe_url}/_config/data", method="DELETE")
    )
    front = StripeFront(upstream=localstripe_url, hang_s=1.0).start()
    try:
        yield front
    finally:
        front.stop()


@pytest.fixture
def engine() -> Iterator[Engine]:
    with billing_engine() as engine:
        yield engine


class KilledError(Exception):
    pass


class DiesAfter(StripeGateway):
    """A gateway whose process "dies" right after its n-th successful send reached Stripe."""

    def __init__(self, *args, sends: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.sends_left = sends

    def _tick(self, result: str) -> str:
        self.sends_left -= 1
        if self.sends_left == 0:
            raise KilledError("killed after Stripe accepted the call")
        return result

    def send_meter_event(self, **kwargs) -> str:
        return self._tick(super().send_meter_event(**kwargs))

    def create_invoice_item(self, **kwargs) -> str:
        return self._tick(super().create_invoice_item(**kwargs))


def drain(engine: Engine, gateway: StripeGateway, start: datetime) -> datetime:
    now = start
    for _ in range(30):
        deliver_pending(engine, gateway, now)
        with Session(engine) as session:
            if not session.scalars(
                select(StripeOutboxEntry).where(StripeOutboxEntry.status != "delivered")
            ).first():
                return now
        now += timedelta(hours=1)  # past any backoff and lease
    with Session(engine) as session:
        stuck = session.scalars(
            select(StripeOutboxEntry).where(StripeOutboxEntry.status != "delivered")
        )
        raise AssertionError(
            f"outbox never drained: {[(e.kind, e.status, e.last_error) for e in stuck]}"
        )


def test_meter_events_are_delivered_exactly_once_through_timeouts_500s_and_a_kill(
    engine: Engine, front: StripeFront
):
    records = [
        usage_record(hour=NOV + timedelta(hours=h), dbu=Decimal("0.000728568") * (h + 1))
        for h in range(6)
    ]
    with (
        Session(engine, expire_on_commit=False) as session,
        session.begin(),
    ):  # records and their deliveries together
        session.add_all(records)
        assert enqueue_meter_events(session, records, NOW) == 6
    with Session(engine, expire_on_commit=False) as session, session.begin():
        assert enqueue_meter_events(session, records, NOW) == 0  # a rerun enqueues nothing
    front.inject("500", "/v1/customers")
    front.inject("timeout", "/v1/billing/meter_events")
    front.inject("500", "/v1/billing/meter_events")
    front.inject("timeout", "/v1/billing/meter_events")

    with pytest.raises(KilledError):
        deliver_pending(
            engine, DiesAfter("sk_test_x", api_base=front.url, timeout_s=0.5, sends=2), NOW
        )
    drain(engine, StripeGateway("sk_test_x", api_base=front.url, timeout_s=0.5), NOW)

    with Session(engine) as session:
        customer_id = session.get_one(StripeCustomer, "ws1").customer_id
    assert {i: (e.value, e.customer_id) for i, e in front.live_events().items()} == {
        r.record_id: (format(r.usage_quantity, "f"), customer_id) for r in records
    }
    posts = front.requests.count("POST /v1/billing/meter_events")
    assert posts > len(records)  # retries did happen; Stripe's identifier check absorbed them


def test_a_retraction_cancels_the_event_it_corrects(engine: Engine, front: StripeFront):
    original = usage_record(hour=NOV, dbu="3")
    retraction = usage_record(
        hour=NOV, dbu="-3", record_type="RETRACTION", corrects=original.record_id
    )
    restatement = usage_record(hour=NOV, dbu="2", record_type="RESTATEMENT")
    gateway = StripeGateway("sk_test_x", api_base=front.url, timeout_s=0.5)
    for batch in ([original], [retraction, restatement]):
        with Session(engine, expire_on_commit=False) as session, session.begin():
            session.add_all(batch)
            enqueue_meter_events(session, batch, NOW)
        drain(engine, gateway, NOW)
    assert {i: e.value for i, e in front.live_events().items()} == {restatement.record_id: "2"}


def test_while_stripe_is_down_nothing_is_lost_and_retries_back_off(
    engine: Engine, front: StripeFront
):
    record = usage_record(hour=NOV, dbu="1")
    with Session(engine, expire_on_commit=False) as session, session.begin():
        session.add(record)
        enqueue_meter_events(session, [record], NOW)
    down = StripeGateway("sk_test_x", api_base=f"http://127.0.0.1:{_free_port()}", timeout_s=0.5)
    waits = []
    now = NOW
    for _ in range(3):
        report = deliver_pending(engine, down, now)
        assert report.retrying == 1
        with Session(engine) as session:
            entry = session.scalars(select(StripeOutboxEntry)).one()
        waits.append(entry.next_attempt_at - now)
        assert (
            deliver_pending(engine, down, entry.next_attempt_at - timedelta(seconds=1)).retrying
            == 0
        )
        now = entry.next_attempt_at
    assert waits == [timedelta(seconds=30), timedelta(seconds=60), timedelta(seconds=120)]
    assert entry.status == "pending" and "APIConnectionError" in (entry.last_error or "")
    drain(engine, StripeGateway("sk_test_x", api_base=front.url), now)
    assert list(front.live_events()) == [record.record_id]


def test_invoices_reach_localstripe_exactly_once_with_lines_in_cents(
    engine: Engine, front: StripeFront
):
    records = [
        usage_record(hour=NOV, dbu="12.3456789", workspace_id=ws, endpoint_id=ep)
        for ws in ("ws1", "ws2")
        for ep in ("ep1", "ep2", "ep3")
    ]
    with Session(engine, expire_on_commit=False) as session, session.begin():
        session.add_all(records)
    invoices = close_period(
        engine,
        "2026-11",
        load_rate_cards(),
        "aws",
        "us-east-1",
        "PREMIUM",
        NOW,
        on_invoice=enqueue_invoice,
    )
    assert [i.status for i in invoices] == ["draft", "draft"]
    front.inject("timeout", "/v1/invoiceitems")
    front.inject("500", "/v1/invoiceitems")
    front.inject("timeout", "/v1/invoices")
    dying = DiesAfter("sk_test_x", api_base=front.url, timeout_s=0.5, sends=3)
    with pytest.raises(KilledError):  # a workspace's items go one per pass while retrying
        for hour in range(10):
            deliver_pending(engine, dying, NOW + timedelta(hours=hour))
    drain(engine, StripeGateway("sk_test_x", api_base=front.url, timeout_s=0.5), NOW)

    client = stripe.StripeClient(
        "sk_test_x", base_addresses={"api": front.url}, max_network_retries=0
    )
    with Session(engine) as session:
        for ours in invoices:
            customer_id = session.get_one(StripeCustomer, ours.workspace_id).customer_id
            (theirs,) = client.v1.invoices.list({"customer": customer_id}).data
            stored = session.get_one(type(ours), ours.invoice_id)
            assert (stored.status, stored.stripe_invoice_id) == ("open", theirs.id)
            assert theirs.metadata is not None
            assert theirs.metadata["moeserve_invoice_id"] == ours.invoice_id
            amounts = sorted(line.amount for line in theirs.lines.data)
            assert amounts == sorted(int(line.amount * 100) for line in ours.lines)
            assert theirs.total == int(ours.total * 100) == sum(amounts)
            items = client.v1.invoice_items.list({"customer": customer_id}).data
            assert len(items) == 0  # every item was taken by the one invoice
    assert len(client.v1.customers.list().data) == 2
