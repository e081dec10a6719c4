"""The billing API's listings: workspace scoping, ISO 8601 ranges, JSON and CSV."""

from __future__ import annotations

import asyncio
import csv
import io
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from pydantic import SecretStr
from sqlalchemy import select

from billing.capacity import CapacityInterval
from billing.ledger import UsageLedger, UsageRow
from billing.metering import live_records
from billing.settings import BillingSettings
from control_plane.db.models import Workspace
from tests.billing.test_stripe_webhooks import signed
from tests.control_plane.conftest import LiveServer, live_server, make_settings, wait_for
from tests.control_plane.fake_provider import InstantProvider
from tests.control_plane.test_tenancy import default_workspace, new_user, new_workspace

BASE = "/api/2.0/billing"
T0 = datetime(2026, 11, 26, 14, 0, tzinfo=UTC)


def _record(server: LiveServer, rows: list[UsageRow]) -> None:
    async def write() -> None:
        async with UsageLedger(server.plane.engine) as ledger:
            await asyncio.gather(*(ledger.record(row) for row in rows))

    asyncio.run(write())


def _row(
    request_id: str, account_id: str, workspace_id: str, minutes: int, tokens: tuple[int, int]
) -> UsageRow:
    return UsageRow(
        databricks_request_id=request_id,
        requester="someone",
        status_code=200,
        request_time=T0 + timedelta(minutes=minutes),
        served_entity_id="dbrx-tiny-1",
        entity_name="dbrx-tiny",
        entity_version="1",
        model_family="dbrx",
        workload_type="CPU",
        endpoint_name="chat",
        endpoint_id="e" * 32,
        account_id=account_id,
        workspace_id=workspace_id,
        input_token_count=tokens[0],
        output_token_count=tokens[1],
        request_streaming=False,
    )


def test_endpoint_usage_is_scoped_ranged_and_exports_csv(instant_server: LiveServer) -> None:
    home = default_workspace(instant_server)
    other = new_workspace(instant_server, "other")
    with instant_server.plane.sessions() as session:
        workspace = session.get(Workspace, home)
        assert workspace is not None
        account = workspace.account_id
    _record(
        instant_server,
        [
            _row("a1", account, home, 5, (10, 20)),
            _row("a2", account, home, 65, (1, 2)),
            _row("b1", account, other, 10, (3, 4)),
        ],
    )
    with instant_server.client() as admin:  # account admin: every workspace, or one
        everything = admin.get(f"{BASE}/endpoint-usage").json()["endpoint_usage"]
        assert {r["databricks_request_id"] for r in everything} == {"a1", "a2", "b1"}
        only_other = admin.get(f"{BASE}/endpoint-usage", params={"workspace_id": other})
        assert [r["databricks_request_id"] for r in only_other.json()["endpoint_usage"]] == ["b1"]
        first_hour = admin.get(
            f"{BASE}/endpoint-usage",
            params={"start_time": "2026-11-26T14:00:00Z", "end_time": "2026-11-26T15:00:00Z"},
        ).json()["endpoint_usage"]
        assert {r["databricks_request_id"] for r in first_hour} == {"a1", "b1"}
        assert first_hour[0]["request_time"].endswith("Z")
        exported = admin.get(f"{BASE}/endpoint-usage", params={"format": "csv"})
        assert exported.headers["content-type"].startswith("text/csv")
        table = list(csv.DictReader(io.StringIO(exported.text)))
        assert len(table) == 3 and table[0]["input_token_count"] == "10"
        by_accept = admin.get(f"{BASE}/endpoint-usage", headers={"Accept": "text/csv"})
        assert by_accept.text == exported.text
        bad = admin.get(f"{BASE}/endpoint-usage", params={"start_time": "yesterday"})
        assert bad.status_code == 400 and "ISO 8601" in bad.json()["message"]
    other_admin = new_user(instant_server, other, "finance", admin=True)
    with instant_server.client(other_admin) as finance:  # a workspace admin: its own only
        own = finance.get(f"{BASE}/endpoint-usage").json()["endpoint_usage"]
        assert [r["databricks_request_id"] for r in own] == ["b1"]
        assert (
            finance.get(f"{BASE}/endpoint-usage", params={"workspace_id": home}).status_code == 403
        )
    plain_user = new_user(instant_server, home, "analyst")
    with instant_server.client(plain_user) as analyst:
        assert analyst.get(f"{BASE}/endpoint-usage").status_code == 403


def test_stripe_webhook_route_verifies_signatures(database_url: str, tmp_path: Any) -> None:
    """Stripe signs its webhook (no bearer token): a good signature is recorded once, a bad
    one is a 400, and without a configured secret the route says so."""
    secret = "whsec_route_test"
    settings = make_settings(
        database_url, tmp_path, billing=BillingSettings(stripe_webhook_secret=SecretStr(secret))
    )
    with live_server(settings, InstantProvider()) as server:
        payload, header = signed("evt_route", "invoice.paid", secret=secret)
        route = f"{server.url}{BASE}/stripe/webhook"
        first = httpx.post(route, content=payload, headers={"Stripe-Signature": header})
        again = httpx.post(route, content=payload, headers={"Stripe-Signature": header})
        assert (first.json(), again.json()) == ({"result": "recorded"}, {"result": "duplicate"})
        forged = httpx.post(
            route, content=payload.replace(b"paid", b"void"), headers={"Stripe-Signature": header}
        )
        assert forged.status_code == 400 and "signature" in forged.json()["message"]


def test_provisioned_throughput_accrues_chunk_seconds_whatever_the_traffic(
    instant_server: LiveServer,
) -> None:
    """Through the reconciler: an endpoint provisioned at 2 chunks (2 × 2,900 tokens/s of
    dbrx-tiny) holds them from promotion; 90 s later it has accrued exactly
    2 × 109.8 × 90 / 3600 DBU of COMPUTE_TIME, and its token traffic adds no TOKEN DBU."""
    entity = {
        "entity_name": "dbrx-tiny",
        "entity_version": "1",
        "min_provisioned_throughput": 5800,
        "max_provisioned_throughput": 5800,
    }
    with instant_server.client() as admin:
        created = admin.post(
            "/api/2.0/serving-endpoints",
            json={"name": "pt", "config": {"served_entities": [entity]}},
        )
        assert created.status_code == 200, created.text
        wait_for(
            lambda: admin.get("/api/2.0/serving-endpoints/pt").json()["state"]["ready"] == "READY",
            what="the provisioned endpoint",
        )
    plane = instant_server.plane
    with plane.sessions() as session:
        [interval] = session.scalars(
            select(CapacityInterval).where(CapacityInterval.endpoint_name == "pt")
        ).all()
        start, endpoint_id = interval.started_at, interval.endpoint_id
        workspace = session.get(Workspace, default_workspace(instant_server))
        assert interval.provisioned_chunks == 2 and workspace is not None
    traffic = _row("pt-1", workspace.account_id, workspace.id, 0, (5000, 9000))
    _record(
        instant_server,
        [replace(traffic, endpoint_id=endpoint_id, endpoint_name="pt", request_time=start)],
    )
    context = plane.billing.context
    records = live_records(plane.engine, context, start + timedelta(seconds=90))
    mine = [r for r in records if r.endpoint_id == endpoint_id]
    assert {r.usage_type for r in mine} == {"COMPUTE_TIME"}  # no TOKEN DBU on top
    rate = plane.rate_cards.at(start).throughput("dbrx", "dbrx-tiny", "1").dbu_per_chunk_hour
    assert sum(r.usage_quantity for r in mine) == 2 * rate * 90 / 3600 == Decimal("5.49")
