"""A workspace's usage is billed where it lives: its records name its region's SKUs and its
cloud, and its invoice is priced at its cloud's and region class's $/DBU; workspaces that
live where the installation does are billed as before."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, text

from billing.jobs import BillingJobs
from billing.ratecard import load_rate_cards
from billing.settings import BillingSettings
from tests.billing.test_metering_helpers import (
    USAGE,
    at,
    insert,
    migrated_engine,
    records,
    usage_row,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Engine]:
    yield from migrated_engine(request.param, tmp_path)


def test_each_workspace_is_metered_and_invoiced_where_it_lives(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO accounts (id, name, created_at) VALUES ('acct-1', 'a', :now)"),
            {"now": at(0)},
        )
        for workspace, cloud, region in [
            ("ws-local", None, None),
            ("ws-eu", "aws", "eu-west-1"),
            ("ws-gcp", "gcp", None),  # the cloud's default region
        ]:
            connection.execute(
                text(
                    "INSERT INTO workspaces (id, account_id, name, created_at, cloud, region) "
                    "VALUES (:id, 'acct-1', :id, :now, :cloud, :region)"
                ),
                {"id": workspace, "now": at(0), "cloud": cloud, "region": region},
            )
    insert(
        engine,
        USAGE,
        [
            usage_row(f"r-{ws}", at(9, 5), 10**7, 10**6, workspace_id=ws, endpoint_id=f"ep-{ws}")
            for ws in ("ws-local", "ws-eu", "ws-gcp")
        ],
    )
    jobs = BillingJobs(engine, BillingSettings(), "local", load_rate_cards())
    jobs.meter(at(11))

    by_workspace = {r["workspace_id"]: r for r in records(engine)}
    assert {ws: (r["cloud"], r["sku_name"]) for ws, r in by_workspace.items()} == {
        "ws-local": ("local", "PREMIUM_SERVERLESS_REAL_TIME_INFERENCE_LOCAL"),
        "ws-eu": ("aws", "PREMIUM_SERVERLESS_REAL_TIME_INFERENCE_EU_WEST_1"),
        "ws-gcp": ("gcp", "PREMIUM_SERVERLESS_REAL_TIME_INFERENCE_US_CENTRAL1"),
    }
    dbu = {ws: r["usage_quantity"] for ws, r in by_workspace.items()}
    assert len(set(dbu.values())) == 1  # the same tokens: the same DBUs everywhere

    invoices = {
        i.workspace_id: i for i in jobs.close_month("2026-11", at(1, day=1).replace(month=12))
    }
    card = load_rate_cards().at(at(0, day=1))
    cents = Decimal("0.01")
    for workspace, (cloud, region_class) in {
        "ws-local": ("local", "local"),
        "ws-eu": ("aws", "eu"),
        "ws-gcp": ("gcp", "us"),
    }.items():
        price = card.dollars_per_dbu(cloud, region_class, "PREMIUM")
        expected = (dbu[workspace] * price).quantize(cents, rounding=ROUND_HALF_EVEN)
        assert invoices[workspace].total == expected, workspace
    assert invoices["ws-eu"].total != invoices["ws-local"].total
