"""Hourly usage records for the billing dashboard's tests: `endpoints` endpoints spread over
workspaces, one record an hour each (two SKUs alternating by endpoint), for `days` days,
written with one multi-row insert per batch as metering writes them.

The seeded hours end `MARGIN` before the current hour, outside the window that live
metering (and the metering job) recomputes, so the seeded records are left as they are."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, insert

from billing.records import UsageRecord
from billing.skus import sku_name

MARGIN = timedelta(hours=6)
BATCH = 5_000


@dataclass(frozen=True)
class Seeded:
    start: datetime  # the first seeded hour
    end: datetime  # the end of the last seeded hour
    records: int
    total_dbu: Decimal
    endpoints: dict[str, str]  # endpoint id -> name


def seed_usage(
    engine: Engine,
    *,
    account_id: str,
    workspace_ids: list[str],
    region: str,
    cloud: str = "LOCAL",
    endpoints: int = 50,
    days: int = 90,
    now: datetime | None = None,
    seed: int = 7,
) -> Seeded:
    """Seed the records; every quantity is a random exact decimal (9 places)."""
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    end = now.replace(minute=0, second=0, microsecond=0) - MARGIN
    start = end - timedelta(days=days)
    skus = [sku_name("PREMIUM", region), sku_name("PREMIUM", region, launch=True)]
    names = {f"seed{index:028d}": f"seeded-{index:02d}" for index in range(endpoints)}
    total = Decimal(0)
    rows: list[dict[str, Any]] = []
    count = 0
    with engine.begin() as connection:
        for index, (endpoint_id, name) in enumerate(names.items()):
            workspace = workspace_ids[index % len(workspace_ids)]
            sku = skus[index % len(skus)]
            hour = start
            while hour < end:
                dbu = Decimal(rng.randrange(1, 2_000_000_000)).scaleb(-9)
                total += dbu
                where = (account_id, workspace, cloud)
                rows.append(_record(where, sku, endpoint_id, name, hour, dbu))
                hour += timedelta(hours=1)
                if len(rows) >= BATCH:
                    connection.execute(insert(UsageRecord), rows)
                    count += len(rows)
                    rows = []
        if rows:
            connection.execute(insert(UsageRecord), rows)
            count += len(rows)
    return Seeded(start, end, count, total, names)


def _record(
    where: tuple[str, str, str],
    sku: str,
    endpoint_id: str,
    name: str,
    hour: datetime,
    dbu: Decimal,
) -> dict[str, Any]:
    account_id, workspace_id, cloud = where
    key = f"seed|{endpoint_id}|{sku}|{hour.isoformat()}"
    return {
        "record_id": hashlib.sha256(key.encode()).hexdigest()[:32],
        "account_id": account_id,
        "workspace_id": workspace_id,
        "sku_name": sku,
        "cloud": cloud,
        "usage_start_time": hour,
        "usage_end_time": hour + timedelta(hours=1),
        "usage_date": hour.date(),
        "custom_tags": {},
        "usage_unit": "DBU",
        "usage_quantity": dbu,
        "usage_metadata": {"endpoint_name": name, "endpoint_id": endpoint_id},
        "identity_metadata": {},
        "record_type": "ORIGINAL",
        "billing_origin_product": "MODEL_SERVING",
        "product_features": {"serving_type": "FOUNDATION_MODEL"},
        "usage_type": "TOKEN",
        "endpoint_id": endpoint_id,
        "served_entity_name": "dbrx-tiny",
        "input_tokens": 0,
        "output_tokens": 0,
        "chunk_seconds": Decimal(0),
        "launches": 0,
        "rate_card_version": "2024-03-27",
        "corrects": None,
        "created_at": hour + timedelta(hours=1),
    }
