"""Stripe unreachable for a while (issue 14's fault suite): the outbox holds its deliveries
and, once Stripe is back, sends each exactly once.

"Stripe" is one real localstripe process (`tests/billing/fakes/localstripe_launcher.py`,
which also answers `/v1/billing/meter_events` the way Stripe does, since localstripe has no
meters) keeping its state in a pickle file in the test's tmp dir, so that the process
can be killed and started again on the same port with everything it had accepted. The
outbox holds meter events (mode a) of two workspaces and the invoice items and invoices
(mode b) of a closed period for two more. Part-way through the first delivery pass, right
after Stripe accepted a call, the localstripe process is killed (SIGKILL); the pass goes
on against a dead port, and more passes run while it is down; then it is started again
and the outbox drained.

Required: while Stripe is down no pass raises, no entry is marked delivered, and every
entry that was tried stays pending with exponential backoff; afterwards every entry is
delivered, and Stripe holds each item exactly once: one customer per workspace, one meter
event per usage record (each posted once: no retry even needed Stripe's identifier check),
one invoice per workspace whose lines are exactly our invoice's lines, no invoice item left
over.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import stripe
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from billing.invoicing import Invoice, close_period
from billing.ratecard import load_rate_cards
from billing.records import UsageRecord
from billing.stripe_gateway import (
    StripeCustomer,
    StripeGateway,
    StripeOutboxEntry,
    backoff,
    deliver_pending,
    enqueue_invoice,
    enqueue_meter_events,
)
from tests.billing.fakes.usage import NOW, billing_engine, usage_record
from tests.conftest import REPO_ROOT
from tests.control_plane.moeserve_process import free_port

NOV = datetime(2026, 11, 3, 14, tzinfo=UTC)  # invoices: November, closed at NOW
DEC = datetime(2026, 12, 1, tzinfo=UTC)  # meter events: December (no invoice takes them)
CALLS_BEFORE_OUTAGE = 8  # customer A, its 4 meter events, customer 1, 2 of its 3 items
DELIVERED_BEFORE_OUTAGE = 6  # the outbox entries among them (customers are not entries)
OUTAGE_PASSES = 3
BASE_BACKOFF = timedelta(seconds=30)  # deliver_pending's defaults
MAX_BACKOFF = timedelta(hours=1)


@dataclass
class LocalStripe:
    """A localstripe process on `port`, its state in `store`; `kill` and `start` again."""

    port: int
    store: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.billing.fakes.localstripe_launcher",
                str(self.port),
                "--store",
                str(self.store),
            ],
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                self.meter_events()
                return
            except OSError:
                assert self.process.poll() is None, "localstripe exited"
                assert time.monotonic() < deadline, "localstripe did not answer in 20 s"
                time.sleep(0.1)

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        assert self.process.wait(10) == -signal.SIGKILL

    def meter_events(self) -> dict[str, dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/_config/meter_events", timeout=5) as answer:
            events: dict[str, dict[str, Any]] = json.load(answer)
            return events

    def client(self) -> stripe.StripeClient:
        return stripe.StripeClient(
            "sk_test_x", base_addresses={"api": self.url}, max_network_retries=0
        )


@pytest.fixture
def localstripe(tmp_path: Path) -> Iterator[LocalStripe]:
    server = LocalStripe(free_port(), tmp_path / "localstripe.pickle")
    server.start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait(10)


@pytest.fixture
def engine() -> Iterator[Engine]:
    with billing_engine() as engine:
        yield engine


class StripeDiesAfter(StripeGateway):
    """A gateway that kills localstripe right after Stripe accepted its `calls`-th call,
    then goes on (against a dead port) as the delivery pass does."""

    def __init__(self, *args: Any, stripe_server: LocalStripe, calls: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.stripe_server = stripe_server
        self.calls_left = calls

    def _accepted(self, result: str) -> str:
        self.calls_left -= 1
        if self.calls_left == 0:
            self.stripe_server.kill()
        return result

    def create_customer(self, workspace_id: str, account_id: str) -> str:
        return self._accepted(super().create_customer(workspace_id, account_id))

    def send_meter_event(self, **kwargs: Any) -> str:
        return self._accepted(super().send_meter_event(**kwargs))

    def create_invoice_item(self, **kwargs: Any) -> str:
        return self._accepted(super().create_invoice_item(**kwargs))

    def create_invoice(self, **kwargs: Any) -> str:
        return self._accepted(super().create_invoice(**kwargs))


def _outbox(engine: Engine) -> list[StripeOutboxEntry]:
    with Session(engine) as session:
        return list(session.scalars(select(StripeOutboxEntry).order_by(StripeOutboxEntry.id)))


def _metered(engine: Engine, workspace_id: str) -> list[UsageRecord]:
    records = [
        usage_record(
            hour=DEC + timedelta(hours=h),
            dbu=Decimal("0.000728568") * (h + 1),
            workspace_id=workspace_id,
        )
        for h in range(4)
    ]
    with Session(engine, expire_on_commit=False) as session, session.begin():
        session.add_all(records)  # the records and their deliveries in one transaction
        assert enqueue_meter_events(session, records, NOW) == len(records)
    return records


def _invoiced(engine: Engine) -> list[Invoice]:
    records = [
        usage_record(hour=NOV, dbu="12.3456789", workspace_id=ws, endpoint_id=ep)
        for ws in ("ws1", "ws2")
        for ep in ("ep1", "ep2", "ep3")
    ]
    with Session(engine, expire_on_commit=False) as session, session.begin():
        session.add_all(records)
    return close_period(
        engine,
        "2026-11",
        load_rate_cards(),
        "aws",
        "us-east-1",
        "PREMIUM",
        NOW,
        on_invoice=enqueue_invoice,
    )


def test_stripe_down_for_a_while_the_outbox_holds_deliveries_and_sends_each_once(
    engine: Engine, localstripe: LocalStripe
) -> None:
    # In id order: workspace A's meter events, the invoices' items and invoices (ws1, ws2),
    # workspace B's meter events.
    metered = _metered(engine, "wsA")
    invoices = _invoiced(engine)
    metered += _metered(engine, "wsB")
    entries = len(_outbox(engine))
    assert entries == len(metered) + sum(len(i.lines) + 1 for i in invoices) == 16

    # -- Stripe dies part-way through a pass; the pass goes on --------------------------
    dying = StripeDiesAfter(
        "sk_test_x",
        api_base=localstripe.url,
        timeout_s=2,
        stripe_server=localstripe,
        calls=CALLS_BEFORE_OUTAGE,
    )
    first = deliver_pending(engine, dying, NOW)
    assert dying.calls_left == 0, "Stripe was never stopped"
    delivered_before = {e.idempotency_key for e in _outbox(engine) if e.status == "delivered"}
    assert (first.delivered, first.failed) == (len(delivered_before), 0)
    assert first.delivered == DELIVERED_BEFORE_OUTAGE
    assert first.retrying + first.blocked == entries - DELIVERED_BEFORE_OUTAGE

    # -- while it is down: passes hold everything, back off, raise nothing --------------
    down = StripeGateway("sk_test_x", api_base=localstripe.url, timeout_s=2)
    now = NOW
    for _ in range(OUTAGE_PASSES):
        held = [e for e in _outbox(engine) if e.status == "pending"]
        now = max(e.next_attempt_at for e in held)  # every entry due again
        started = time.monotonic()
        report = deliver_pending(engine, down, now)
        assert time.monotonic() - started < 10, "a pass hangs on the dead port"
        assert (report.delivered, report.failed) == (0, 0), report
        assert report.retrying + report.blocked == len(held) == entries - DELIVERED_BEFORE_OUTAGE
        after = {e.id: e for e in _outbox(engine)}
        delivered = {e.idempotency_key for e in after.values() if e.status == "delivered"}
        assert delivered == delivered_before
        for before in held:
            entry = after[before.id]
            assert entry.status == "pending"
            if entry.attempts > before.attempts:  # tried now: backed off further
                assert entry.next_attempt_at == now + backoff(
                    entry.attempts, BASE_BACKOFF, MAX_BACKOFF
                )
                assert "APIConnectionError" in (entry.last_error or ""), entry.last_error
    tried = [e for e in _outbox(engine) if e.status == "pending" and e.attempts > 1]
    assert tried, "no held entry was retried during the outage"
    assert max(e.attempts for e in tried) == OUTAGE_PASSES + 1

    # -- Stripe is back, with what it had accepted; the outbox drains -----------------------
    localstripe.start()
    client = localstripe.client()
    assert len(localstripe.meter_events()) == 4  # workspace A's, accepted before the stop
    assert len(client.v1.customers.list().data) == 2  # A's and ws1's
    live = StripeGateway("sk_test_x", api_base=localstripe.url, timeout_s=2)
    for _ in range(10):
        now += timedelta(hours=1)  # past any backoff
        deliver_pending(engine, live, now)
        if all(e.status == "delivered" for e in _outbox(engine)):
            break
    outbox = _outbox(engine)
    assert [(e.kind, e.status, e.last_error) for e in outbox if e.status != "delivered"] == []

    # -- each item is in Stripe exactly once -------------------------------------------
    with Session(engine) as session:
        customers = {c.workspace_id: c.customer_id for c in session.scalars(select(StripeCustomer))}
        stored = {i.invoice_id: i for i in session.scalars(select(Invoice))}
    theirs = client.v1.customers.list({"limit": 100}).data
    assert sorted(c.id for c in theirs) == sorted(customers.values())
    assert sorted(customers) == ["ws1", "ws2", "wsA", "wsB"]

    events = localstripe.meter_events()
    assert {i: (e["value"], e["customer_id"], e["posts"]) for i, e in events.items()} == {
        r.record_id: (format(r.usage_quantity, "f"), customers[str(r.workspace_id)], 1)
        for r in metered
    }

    invoice_lines = 0
    for ours in invoices:
        customer_id = customers[ours.workspace_id]
        (invoice,) = client.v1.invoices.list({"customer": customer_id}).data
        assert invoice.metadata is not None
        assert invoice.metadata["moeserve_invoice_id"] == ours.invoice_id
        amounts = sorted(line.amount for line in invoice.lines.data)
        assert amounts == sorted(int(line.amount * 100) for line in ours.lines)
        assert invoice.total == int(ours.total * 100)
        assert client.v1.invoice_items.list({"customer": customer_id}).data == []
        assert (stored[ours.invoice_id].status, stored[ours.invoice_id].stripe_invoice_id) == (
            "open",
            invoice.id,
        )
        invoice_lines += len(amounts)

    kinds = Counter(e.kind for e in outbox)
    print(
        f"\nStripe down for {OUTAGE_PASSES} passes after {len(delivered_before)} of {entries} "
        f"deliveries: {dict(kinds)} delivered once each; Stripe holds {len(theirs)} customers, "
        f"{len(events)} meter events (posted {sum(e['posts'] for e in events.values())} times), "
        f"{len(invoices)} invoices with {invoice_lines} lines; duplicates: 0"
    )
