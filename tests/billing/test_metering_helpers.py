"""Helpers (no tests) shared by the metering tests: migrated databases, a metering context over the
shipped rate cards, and writers of `endpoint_usage` / `capacity_timeline` rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, delete, select

from billing.capacity import CapacityInterval
from billing.db import BillingBase
from billing.ledger.models import EndpointUsage
from billing.metering import MeteringContext
from billing.ratecard import load_rate_cards
from billing.records import UsageRecord
from billing.schema import METADATA
from control_plane.db import build_engine, upgrade

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
USAGE = BillingBase.metadata.tables[EndpointUsage.__tablename__]
CAPACITY = BillingBase.metadata.tables[CapacityInterval.__tablename__]
RECORDS = BillingBase.metadata.tables[UsageRecord.__tablename__]
DBRX_IN, DBRX_OUT = Decimal("10.714"), Decimal("32.143")
DBRX_TINY_CHUNK_HOUR = Decimal("109.8")  # the dbrx-tiny override of rate card 2024-03-27
DBRX_TINY_LAUNCH = Decimal("1.83")


def migrated_engine(kind: str, tmp_path: Any) -> Iterator[Engine]:
    """A database migrated to head plus the billing tables without migrations yet."""
    if kind == "sqlite":
        yield from _migrated(f"sqlite:///{tmp_path / 'metering.db'}")
        return
    yield from _migrated_postgres()


def _migrated_postgres() -> Iterator[Engine]:
    """A fresh PostgreSQL database (as tests/control_plane/conftest.py makes them, without
    importing the control plane's app), dropped afterwards."""
    import psycopg

    name = f"moeserve_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=2)
    except psycopg.OperationalError:
        pytest.fail("PostgreSQL is not answering on 127.0.0.1:5432 (start it: see TESTING.md)")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield from _migrated(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _migrated(url: str) -> Iterator[Engine]:
    engine = build_engine(url)
    try:
        upgrade(engine)
        METADATA.create_all(engine)
        yield engine
    finally:
        engine.dispose()


def context() -> MeteringContext:
    return MeteringContext(
        cloud="aws",
        region="us-east-1",
        tier="PREMIUM",
        rate_cards=load_rate_cards(),
        family_of=lambda name, _version: "mixtral" if name.startswith("mixtral") else "dbrx",
    )


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
