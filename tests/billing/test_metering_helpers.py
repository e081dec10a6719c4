"""Helpers (no tests) shared by the metering tests: migrated databases, a metering context over the
shipped rate cards, and writers of `endpoint_usage` / `capacity_timeline` rows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, delete, select

from bench.metering_scale import context as context  # re-exported: the tests' context
from bench.scratch_db import migrated_engine as migrated
from bench.scratch_db import postgres_available, scratch_postgres
from billing.capacity import CapacityInterval
from billing.db import BillingBase
from billing.ledger.models import EndpointUsage
from billing.records import UsageRecord

USAGE = BillingBase.metadata.tables[EndpointUsage.__tablename__]
CAPACITY = BillingBase.metadata.tables[CapacityInterval.__tablename__]
RECORDS = BillingBase.metadata.tables[UsageRecord.__tablename__]
DBRX_IN, DBRX_OUT = Decimal("10.714"), Decimal("32.143")
DBRX_TINY_CHUNK_HOUR = Decimal("109.8")  # the dbrx-tiny override of rate card 2024-03-27
DBRX_TINY_LAUNCH = Decimal("1.83")


def migrated_engine(kind: str, tmp_path: Any) -> Iterator[Engine]:
    """A database (SQLite, or a fresh PostgreSQL one) migrated to head."""
    if kind == "sqlite":
        with migrated(f"sqlite:///{tmp_path / 'metering.db'}") as engine:
            yield engine
        return
    if not postgres_available():
        pytest.fail("PostgreSQL is not answering on 127.0.0.1:5432 (start it: see docs/testing.md)")
    with scratch_postgres("moeserve_test") as url, migrated(url) as engine:
        yield engine


def at(hour: int, minute: int = 0, second: int = 0, day: int = 27) -> datetime:
    return datetime(2026, 11, day, hour, minute, second, tzinfo=UTC)


def usage_row(
    request_id: str, when: datetime, tokens_in: int, tokens_out: int, **overrides: Any
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "databricks_request_id": request_id,
        "client_request_id": None,
        "requester": "alice@example.com",
        "status_code": 200,
        "request_time": when,
        "served_entity_id": "dbrx-tiny-1",
        "entity_name": "dbrx-tiny",
        "entity_version": "1",
        "model_family": "dbrx",
        "workload_type": "CPU",
        "endpoint_name": "chat",
        "endpoint_id": "ep-chat",
        "workspace_id": "ws-1",
        "account_id": "acct-1",
        "input_token_count": tokens_in,
        "output_token_count": tokens_out,
        "request_streaming": False,
        "usage_context": None,
    }
    row.update(overrides)
    return row


def interval(started: datetime, ended: datetime | None, **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "endpoint_id": "ep-pt",
        "account_id": "acct-1",
        "workspace_id": "ws-1",
        "endpoint_name": "pt",
        "served_entity_name": "dbrx-tiny-1",
        "entity_name": "dbrx-tiny",
        "entity_version": "1",
        "model_family": "dbrx",
        "workload_type": "CPU",
        "workload_size": None,
        "min_replicas": 2,
        "max_replicas": 2,
        "gpus_per_replica": 0,
        "provisioned_chunks": 2,
        "scale_to_zero_enabled": False,
        "parked": False,
        "woke_from_zero": False,
        "started_at": started,
        "ended_at": ended,
    }
    row.update(overrides)
    return row


def insert(engine: Engine, table: Any, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as connection:
        connection.execute(table.insert(), rows)


def records(engine: Engine, **where: Any) -> list[dict[str, Any]]:
    query = select(RECORDS).order_by(RECORDS.c.record_id)
    for column, value in where.items():
        query = query.where(RECORDS.c[column] == value)
    with engine.connect() as connection:
        return [dict(row) for row in connection.execute(query).mappings()]


def delete_records(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(delete(RECORDS))


def total(rows: list[dict[str, Any]], column: str = "usage_quantity") -> Any:
    return sum((row[column] for row in rows), Decimal(0) if column != "input_tokens" else 0)
