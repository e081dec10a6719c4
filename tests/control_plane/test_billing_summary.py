"""The billing dashboard's API: `/summary` (spend by SKU, endpoint and bucket, this month's
spend and forecast), `/endpoint-stats` (requests, errors, tokens, latency percentiles),
`/invoices/{id}/lines/{n}/records` (the records behind a line) and `/viewer`. Each figure is
checked against the listings it must agree with, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from billing.invoicing.close import close_period
from billing.ledger import UsageLedger, UsageRow
from control_plane.ids import utcnow
from tests.billing.dashboard_seed import Seeded, seed_usage
from tests.control_plane.conftest import LiveServer
from tests.control_plane.test_tenancy import default_workspace, new_user, new_workspace

BASE = "/api/2.0/billing"
CENT = Decimal("0.01")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _seed(server: LiveServer, workspaces: list[str], days: int = 40) -> Seeded:
    context = server.plane.billing.context
    account = server.client().get("/api/2.0/workspaces").json()["workspaces"][0]["account_id"]
    return seed_usage(
        server.plane.engine,
        account_id=account,
        workspace_ids=workspaces,
        region=context.region,
        endpoints=3,
        days=days,
    )


def _prices(server: LiveServer) -> dict[str, Decimal]:
    """$/DBU by SKU, from the list-prices listing (the current rate card's rows)."""
    rows = server.client().get(f"{BASE}/list-prices").json()["prices"]
    current = [r for r in rows if not r["price_end_time"]]
    return {r["sku_name"]: Decimal(r["pricing"]["default"]) for r in current}


def _records(server: LiveServer, token: str | None = None, **params: str) -> list[dict[str, Any]]:
    client = server.client() if token is None else server.client(token)
    response = client.get(f"{BASE}/usage", params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["records"])


def test_summary_agrees_with_the_usage_listing_and_the_list_prices(
    instant_server: LiveServer,
) -> None:
    server = instant_server
    workspaces = [default_workspace(server), new_workspace(server, "finance")]
    seeded = _seed(server, workspaces)
    start, end = seeded.start + timedelta(days=3), seeded.end - timedelta(days=2)
    window = {"start_time": _iso(start), "end_time": _iso(end)}
    response = server.client().get(
        f"{BASE}/summary", params={**window, "granularity": "DAY", "group_by": "ENDPOINT"}
    )
    assert response.status_code == 200, response.text
    summary = response.json()

    records = _records(server, **window)
    prices = _prices(server)
    dbu: dict[str, Decimal] = defaultdict(Decimal)
    dollars: dict[str, Decimal] = defaultdict(Decimal)
    by_sku: dict[str, Decimal] = defaultdict(Decimal)
    daily: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for record in records:
        quantity = Decimal(record["usage_quantity"])
        name = record["usage_metadata"]["endpoint_name"]
        dbu[name] += quantity
        dollars[name] += quantity * prices[record["sku_name"]]
        by_sku[record["sku_name"]] += quantity
        daily[(record["usage_start_time"][:10], name)] += quantity
    total = sum(dbu.values(), Decimal(0))
    assert len(records) == 3 * 24 * 35
    assert Decimal(summary["total"]["dbu"]) == total
    total_dollars = sum(dollars.values(), Decimal(0)).quantize(CENT, ROUND_HALF_EVEN)
    assert Decimal(summary["total"]["dollars"]) == total_dollars
    assert {r["endpoint_name"]: Decimal(r["dbu"]) for r in summary["by_endpoint"]} == dbu
    assert {r["endpoint_name"]: Decimal(r["dollars"]) for r in summary["by_endpoint"]} == {
        name: d.quantize(CENT, ROUND_HALF_EVEN) for name, d in dollars.items()
    }
    shown = [Decimal(r["dbu"]) for r in summary["by_endpoint"]]
    assert shown == sorted(shown, reverse=True)  # largest first
    assert {r["sku_name"]: Decimal(r["dbu"]) for r in summary["by_sku"]} == by_sku
    series = {(p["bucket_start"][:10], p["key"]): Decimal(p["dbu"]) for p in summary["series"]}
    assert series == daily

    # Grouped by SKU, hourly, over two days: one point per (hour, SKU).
    hourly = server.client().get(
        f"{BASE}/summary",
        params={
            "start_time": _iso(end - timedelta(days=2)),
            "end_time": _iso(end),
            "granularity": "HOUR",
            "group_by": "SKU",
        },
    )
    assert hourly.status_code == 200, hourly.text
    points = hourly.json()["series"]
    assert {p["key"] for p in points} == set(by_sku)
    assert len({p["bucket_start"] for p in points}) == 48

    # This month: month to date from the listing; the forecast scales it to the month.
    now = utcnow()
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    month = summary["month"]
    assert month["month"] == month_start.strftime("%Y-%m")
    mtd = sum(
        (Decimal(r["usage_quantity"]) for r in _records(server, start_time=_iso(month_start))),
        Decimal(0),
    )
    assert Decimal(month["month_to_date"]["dbu"]) == mtd
    month_end = (month_start + timedelta(days=32)).replace(day=1)
    ratio = Decimal((month_end - month_start).total_seconds()) / Decimal(
        (now - month_start).total_seconds()
    )
    if mtd:
        assert abs(Decimal(month["forecast"]["dbu"]) / (mtd * ratio) - 1) < Decimal("0.01")
    assert Decimal(month["forecast"]["dbu"]) >= mtd


def test_summary_is_scoped_and_refuses_what_it_cannot_answer(instant_server: LiveServer) -> None:
    server = instant_server
    home, other = default_workspace(server), new_workspace(server, "other")
    seeded = _seed(server, [home, other], days=5)
    window = {"start_time": _iso(seeded.start), "end_time": _iso(seeded.end)}
    admin = new_user(server, other, "admin@other", admin=True)

    own = server.client(admin).get(f"{BASE}/summary", params=window)
    assert own.status_code == 200, own.text
    assert {r["workspace_id"] for r in own.json()["by_endpoint"]} == {other}
    listed = _records(server, admin, **window)
    assert Decimal(own.json()["total"]["dbu"]) == sum(
        (Decimal(r["usage_quantity"]) for r in listed), Decimal(0)
    )
    refused = server.client(admin).get(f"{BASE}/summary", params={**window, "workspace_id": home})
    assert refused.status_code == 403
    user = new_user(server, other, "user@other")
    assert server.client(user).get(f"{BASE}/summary", params=window).status_code == 403

    long_hourly = server.client().get(
        f"{BASE}/summary",
        params={
            "start_time": "2026-01-01",
            "end_time": "2026-03-01",
            "granularity": "HOUR",
        },
    )
    assert long_hourly.status_code == 400
    assert "use DAY" in long_hourly.json()["message"]
    backwards = server.client().get(
        f"{BASE}/summary", params={"start_time": "2026-03-01", "end_time": "2026-01-01"}
    )
    assert backwards.status_code == 400
    bad = server.client().get(
        f"{BASE}/summary", params={**window, "group_by": "TENANT", "granularity": "DAY"}
    )
    assert bad.status_code == 400


def _usage_row(
    where: tuple[str, str], index: int, status: int, duration_ms: int | None, when: datetime
) -> UsageRow:
    return UsageRow(
        databricks_request_id=f"stats-{index:04d}",
        requester="someone",
        status_code=status,
        request_time=when,
        served_entity_id="dbrx-tiny-1",
        entity_name="dbrx-tiny",
        entity_version="1",
        model_family="dbrx",
        workload_type="CPU",
        endpoint_name="chat",
        endpoint_id="e" * 32,
        account_id=where[0],
        workspace_id=where[1],
        input_token_count=index,
        output_token_count=2 * index,
        request_streaming=False,
        execution_duration_ms=duration_ms,
    )


def test_endpoint_stats_counts_errors_tokens_and_latency_percentiles(
    instant_server: LiveServer,
) -> None:
    server = instant_server
    listed = server.client().get("/api/2.0/workspaces").json()["workspaces"][0]
    where = (listed["account_id"], listed["workspace_id"])
    t0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    rows = [
        # 100 requests over two days: durations 1..100 ms; every 10th a 500; one without a
        # duration (settled from a checkpoint after a crash)
        _usage_row(where, i, 500 if i % 10 == 0 else 200, i, t0 + timedelta(minutes=29 * i))
        for i in range(1, 101)
    ]
    rows.append(_usage_row(where, 101, 520, None, t0 + timedelta(minutes=1)))

    async def write() -> None:
        async with UsageLedger(server.plane.engine) as ledger:
            await asyncio.gather(*(ledger.record(row) for row in rows))

    asyncio.run(write())
    params = {
        "endpoint_name": "chat",
        "start_time": "2026-11-20",
        "end_time": "2026-11-23",
        "granularity": "DAY",
    }
    response = server.client().get(f"{BASE}/endpoint-stats", params=params)
    assert response.status_code == 200, response.text
    stats = response.json()
    assert stats["requests"] == 101
    assert stats["errors"] == 11
    assert stats["error_rate"] == "0.108911"  # 11 / 101, to six places
    assert stats["input_tokens"] == sum(r.input_token_count for r in rows)
    assert stats["output_tokens"] == sum(r.output_token_count for r in rows)
    assert (stats["p50_latency_ms"], stats["p99_latency_ms"]) == (50, 99)
    by_day: dict[str, int] = defaultdict(int)
    for row in rows:
        by_day[row.request_time.strftime("%Y-%m-%d")] += 1
    assert {p["bucket_start"][:10]: p["requests"] for p in stats["series"]} == by_day

    hourly = (
        server.client()
        .get(f"{BASE}/endpoint-stats", params={**params, "granularity": "HOUR"})
        .json()
    )
    assert sum(p["requests"] for p in hourly["series"]) == 101
    assert len(hourly["series"]) == len({r.request_time.replace(minute=0) for r in rows})

    empty = (
        server.client()
        .get(f"{BASE}/endpoint-stats", params={**params, "endpoint_name": "nothing-here"})
        .json()
    )
    assert (empty["requests"], empty["error_rate"], empty["p50_latency_ms"]) == (0, "0", None)
    outsider = new_user(server, new_workspace(server, "outsiders"), "o@x", admin=True)
    # another workspace's admin sees none of this workspace's requests
    theirs = server.client(outsider).get(f"{BASE}/endpoint-stats", params=params).json()
    assert theirs["requests"] == 0
    nul = server.client().get(f"{BASE}/endpoint-stats", params={**params, "endpoint_name": "a\0"})
    assert nul.status_code == 400


def test_an_invoice_line_lists_the_records_it_was_summed_from(instant_server: LiveServer) -> None:
    server = instant_server
    home, other = default_workspace(server), new_workspace(server, "books")
    now = utcnow()
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    last_month = (month_start - timedelta(days=1)).strftime("%Y-%m")
    _seed(server, [home, other], days=40)
    context = server.plane.billing.context
    invoices = close_period(
        server.plane.engine,
        last_month,
        context.rate_cards,
        context.cloud,
        context.region,
        context.tier,
        now,
    )
    assert len(invoices) == 2
    admin = new_user(server, other, "admin@books", admin=True)
    for invoice in invoices:
        detail = server.client().get(f"{BASE}/invoices/{invoice.invoice_id}").json()
        assert detail["lines"]
        for line in detail["lines"]:
            url = f"{BASE}/invoices/{invoice.invoice_id}/lines/{line['line_no']}/records"
            response = server.client().get(url)
            assert response.status_code == 200, response.text
            records = response.json()["records"]
            assert records
            assert {(r["sku_name"], r["usage_metadata"]["endpoint_id"]) for r in records} == {
                (line["sku_name"], line["endpoint_id"])
            }
            assert sum((Decimal(r["usage_quantity"]) for r in records), Decimal(0)) == Decimal(
                line["dbu"]
            )
            csv_text = server.client().get(url, params={"format": "csv"}).text
            assert len(csv_text.strip().splitlines()) == len(records) + 1
            visible = server.client(admin).get(url).status_code
            assert visible == (200 if invoice.workspace_id == other else 404)
        missing = f"{BASE}/invoices/{invoice.invoice_id}/lines/999/records"
        assert server.client().get(missing).status_code == 404
    assert server.client().get(f"{BASE}/invoices/nope/lines/1/records").status_code == 404


def test_viewer_names_the_workspaces_a_token_may_read(instant_server: LiveServer) -> None:
    server = instant_server
    home, other = default_workspace(server), new_workspace(server, "zeta")
    admin_view = server.client().get(f"{BASE}/viewer")
    assert admin_view.status_code == 200, admin_view.text
    assert admin_view.json()["is_account_admin"] is True
    assert {w["workspace_id"] for w in admin_view.json()["workspaces"]} == {home, other}
    ws_admin = new_user(server, other, "admin@zeta", admin=True)
    view = server.client(ws_admin).get(f"{BASE}/viewer").json()
    assert (view["is_account_admin"], view["is_workspace_admin"]) == (False, True)
    assert view["workspaces"] == [{"workspace_id": other, "name": "zeta"}]
    assert view["user_name"] == "admin@zeta"
    user = new_user(server, other, "user@zeta")
    assert server.client(user).get(f"{BASE}/viewer").status_code == 403
    assert server.client("dapi-wrong").get(f"{BASE}/viewer").status_code == 401
