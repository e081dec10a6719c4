"""Reading the capacity timeline for a metering window, and what it says about each served
entity: its model (for the model family of token records) and when it was provisioned."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, or_, select

from billing.capacity import CapacityInterval
from billing.metering.context import MeteringContext


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


class EntityFamilies:
    """The model family of a served entity at a given hour.

    `endpoint_usage` only names the served entity (`served_entity_id`, e.g. "dbrx-tiny-1");
    the capacity timeline knows which model (entity_name, entity_version) that name served, so
    the family comes from the latest interval of that endpoint + served entity that started
    before the hour ended. Without one (a usage row with no timeline, e.g. written by another
    control plane before the timeline existed), the served entity's own name is passed to
    `family_of` with version None.
    """

    def __init__(self, ctx: MeteringContext, intervals: list[Interval]) -> None:
        self._ctx = ctx
        self._by_entity: dict[tuple[str, str], list[Interval]] = {}
        for interval in intervals:  # oldest first
            key = (interval.endpoint_id, interval.served_entity_name)
            self._by_entity.setdefault(key, []).append(interval)
        self._cache: dict[tuple[str, str | None], str] = {}

    def model(
        self, endpoint_id: str, served_entity: str, hour_end: datetime
    ) -> tuple[str, str | None]:
        """(entity_name, entity_version) served under this name before `hour_end`."""
        candidates = self._by_entity.get((endpoint_id, served_entity), [])
        started = [i for i in candidates if i.started_at < hour_end] or candidates
        if not started:
            return served_entity, None
        latest = started[-1]
        return latest.entity_name, latest.entity_version

    def family(self, endpoint_id: str, served_entity: str, hour_end: datetime) -> str:
        model = self.model(endpoint_id, served_entity, hour_end)
        if model not in self._cache:
            self._cache[model] = self._ctx.family_of(*model)
        return self._cache[model]
