"""Billing end to end through the real stack: queries to a `dbrx-tiny` endpoint (Ray Serve
replicas running the instant engine) → usage rows → hourly TOKEN records in
`/api/2.0/billing/usage` (live at once, then stored by the metering job, never both) → the
month's invoice. DBUs must equal Σ(input × 10.714 + output × 32.143) / 1,000,000 exactly,
for the token counts the clients saw, and the invoice total the Decimal sum rounded once per
line."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal

import pytest

from control_plane.ids import utcnow
from tests.control_plane.conftest import LiveServer
from tests.control_plane.query_fixtures import create_endpoint, instant_ray_server, openai_client

NAME = f"billed-{uuid.uuid4().hex[:6]}"
IN_RATE, OUT_RATE = Decimal("10.714"), Decimal("32.143")


@pytest.fixture(scope="module")
def server(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with instant_ray_server(tmp_path_factory.mktemp("billing")) as live, live.client() as http:
        create_endpoint(http, NAME, tags=[{"key": "team", "value": "search"}])
        yield live


def _token_records(server: LiveServer) -> list[dict[str, str]]:
    with server.client() as http:
        response = http.get("/api/2.0/billing/usage", params={"endpoint_name": NAME})
    assert response.status_code == 200, response.text
    return [r for r in response.json()["records"] if r["usage_type"] == "TOKEN"]


def test_token_records_and_invoice_are_exact(server: LiveServer) -> None:
    client = openai_client(server)
    seen: list[tuple[int, int]] = []
    for i in range(12):
        if i % 3 == 0:
            chunks = list(
                client.chat.completions.create(
                    model=NAME,
                    messages=[{"role": "user", "content": f"stream {i}"}],
                    max_tokens=1 + i % 4,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            usage = chunks[-1].usage
        else:
            usage = client.chat.completions.create(
                model=NAME,
                messages=[{"role": "user", "content": f"question {i} " * (i + 1)}],
                max_tokens=1 + i % 4,
            ).usage
        assert usage is not None
        seen.append((usage.prompt_tokens, usage.completion_tokens))
    expected = sum((IN_RATE * p + OUT_RATE * c for p, c in seen), Decimal(0)) / 1_000_000

    live = _token_records(server)  # the open hour: computed live, nothing stored yet
    assert live and all(r["record_id"].startswith("live-") for r in live)
    assert all(r["sku_name"] == "PREMIUM_SERVERLESS_REAL_TIME_INFERENCE_LOCAL" for r in live)
    assert all(r["custom_tags"] == {"team": "search"} for r in live)  # the endpoint's tags
    assert sum(Decimal(r["usage_quantity"]) for r in live) == expected

    now = utcnow()
    server.plane.billing.meter(now + timedelta(hours=2))  # the hour closes and is stored
    stored = _token_records(server)
    assert sum(Decimal(r["usage_quantity"]) for r in stored) == expected  # not doubled
    server.plane.billing.meter(now + timedelta(hours=2))  # a rerun changes nothing
    assert _token_records(server) == stored

    next_month = (now.replace(day=1) + timedelta(days=32)).replace(day=1, hour=1)
    [invoice] = server.plane.billing.close_month(f"{now:%Y-%m}", next_month)
    price = server.plane.rate_cards.at(now).dollars_per_dbu("local", "local", "PREMIUM")
    lines = [line for line in invoice.lines if line.endpoint_name == NAME]
    assert len(lines) == 1 and lines[0].dbu == expected
    cents = Decimal("0.01")
    assert lines[0].amount == (expected * price).quantize(cents, rounding=ROUND_HALF_EVEN)
    assert invoice.total == sum((line.amount for line in invoice.lines), Decimal(0))
    with server.client() as http:
        listed = http.get("/api/2.0/billing/invoices").json()["invoices"]
        assert [i["invoice_id"] for i in listed] == [invoice.invoice_id]
        detail = http.get(f"/api/2.0/billing/invoices/{invoice.invoice_id}").json()
        assert Decimal(detail["total"]) == invoice.total
        estimate = http.get(
            "/api/2.0/billing/estimate",
            params={
                "endpoint_name": NAME,
                "start_time": f"{now - timedelta(hours=1):%Y-%m-%dT%H:00:00Z}",
                "end_time": f"{now + timedelta(hours=1):%Y-%m-%dT%H:00:00Z}",
            },
        ).json()
    assert estimate["actual"]["mode"] == "pay_per_token"
    assert Decimal(estimate["actual"]["dbu"]) == expected
    assert estimate["alternative"]["mode"] == "provisioned_throughput"
    assert Decimal(estimate["break_even_tokens_per_s"]) > 0


def test_list_prices_and_csv(server: LiveServer) -> None:
    with server.client() as http:
        prices = http.get("/api/2.0/billing/list-prices").json()["prices"]
        local = [p for p in prices if p["sku_name"].endswith("_INFERENCE_LOCAL")]
        assert local and local[0]["usage_unit"] == "DBU"
        assert Decimal(local[0]["pricing"]["default"]) > 0
        exported = http.get("/api/2.0/billing/usage", headers={"Accept": "text/csv"})
    assert exported.headers["content-type"].startswith("text/csv")
    assert exported.text.splitlines()[0].startswith("record_id,account_id,workspace_id")
