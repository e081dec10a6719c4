"""Reading the capacity timeline for a metering window: what each served entity held, and
when."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, or_, select

from billing.capacity import CapacityInterval


@dataclass(frozen=True)
class Interval:
    """One `capacity_timeline` row, detached from the session."""

    endpoint_id: str
    account_id: str
    workspace_id: str | None
    endpoint_name: str
    served_entity_name: str
    entity_name: str
    entity_version: str
    model_family: str
    workload_type: str
    max_replicas: int
    provisioned_chunks: int
    parked: bool
    woke_from_zero: bool
    started_at: datetime
    ended_at: datetime | None


def intervals_overlapping(connection: Connection, start: datetime, end: datetime) -> list[Interval]:
    """Every interval that overlaps [start, end), oldest first. Open intervals (`ended_at`
    None) overlap everything after their start."""
    table = CapacityInterval.__table__
    columns = [table.c[name] for name in Interval.__dataclass_fields__]
    rows = connection.execute(
        select(*columns)
        .where(
            table.c.started_at < end,
            or_(table.c.ended_at.is_(None), table.c.ended_at > start),
        )
        .order_by(table.c.started_at, table.c.id)
    )
    return [Interval(**row._asdict()) for row in rows]
