"""The billing API's listings: workspace scoping, ISO 8601 ranges, JSON and CSV."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from pydantic import SecretStr

from billing.ledger import UsageLedger, UsageRow
from control_plane.db.models import Workspace
from control_plane.settings import BillingSettings
from tests.billing.test_stripe_webhooks import signed
from tests.control_plane.conftest import LiveServer, live_server, make_settings
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
