"""Test helpers for billing: a migrated PostgreSQL database with every billing table, and
hourly usage records built the way metering writes them."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine

from bench.scratch_db import migrated_engine, scratch_postgres
from billing.records import UsageRecord

NOW = datetime(2026, 12, 1, 0, 5, tzinfo=UTC)


@contextlib.contextmanager
def billing_engine() -> Iterator[Engine]:
    """A fresh PostgreSQL database, migrated to head, dropped afterwards."""
    with scratch_postgres("moeserve_test") as url, migrated_engine(url) as engine:
        yield engine


def usage_record(
    *,
    hour: datetime,
    dbu: Decimal | str,
    workspace_id: str = "ws1",
    endpoint_id: str = "ep1",
    sku_name: str = "PREMIUM_SERVERLESS_REAL_TIME_INFERENCE_US_EAST",
    record_type: str = "ORIGINAL",
    corrects: str | None = None,
    seq: int = 0,
    **overrides: Any,
) -> UsageRecord:
    key = f"{workspace_id}|{endpoint_id}|{sku_name}|{hour.isoformat()}|{record_type}|{seq}"
    values: dict[str, Any] = {
        "record_id": hashlib.sha256(key.encode()).hexdigest()[:32],
        "account_id": "acct1",
        "workspace_id": workspace_id,
        "sku_name": sku_name,
        "cloud": "AWS",
        "usage_start_time": hour,
        "usage_end_time": hour + timedelta(hours=1),
        "usage_date": hour.date(),
        "custom_tags": {},
        "usage_unit": "DBU",
        "usage_quantity": Decimal(dbu),
        "usage_metadata": {"endpoint_name": f"name-{endpoint_id}", "endpoint_id": endpoint_id},
        "identity_metadata": {},
        "record_type": record_type,
        "billing_origin_product": "MODEL_SERVING",
        "product_features": {"serving_type": "FOUNDATION_MODEL"},
        "usage_type": "TOKEN",
        "endpoint_id": endpoint_id,
        "served_entity_name": "dbrx-tiny",
        "rate_card_version": "2024-03-27",
        "corrects": corrects,
        "created_at": hour + timedelta(hours=1),
    }
    values.update(overrides)
    return UsageRecord(**values)
