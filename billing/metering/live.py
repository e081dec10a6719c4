"""Live usage: the records of hours not stored yet, computed on the fly for the usage listing.

`run_metering` stores only closed hours; the usage API merges `live_records` into what it
reads, so a request appears in the listing as soon as its ledger row is committed (well
within the 60 s the API promises). A live record is exactly what a run at `now` with no grace
would insert over the last `backfill` hours and the open hour — an ORIGINAL for a key not
stored yet, a RETRACTION + RESTATEMENT pair for a stored key whose usage has changed since —
with `record_id` prefixed "live-", never stored. Stored records plus live records therefore
always sum to the correct total of every hour in the window, whether or not the job has run.
The open hour's capacity counts up to `now`. `backfill` should cover the grace period plus the
job's schedule interval (default 2 hours).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from billing.metering.context import MeteringContext
from billing.metering.hours import HOUR, hour_floor
from billing.metering.job import plan_window
from billing.records import UsageRecord

LIVE_PREFIX = "live-"
DEFAULT_BACKFILL = timedelta(hours=2)


@dataclass(frozen=True)
class UsageFilters:
    """The usage listing's filters: records overlapping [start_time, end_time), of one
    endpoint (by name), of some workspaces (None: every workspace, for account admins)."""

    start_time: datetime | None = None
    end_time: datetime | None = None
    endpoint_name: str | None = None
    workspace_ids: Collection[str | None] | None = None

    def accepts(self, record: UsageRecord) -> bool:
        if self.start_time is not None and record.usage_end_time <= self.start_time:
            return False
        if self.end_time is not None and record.usage_start_time >= self.end_time:
            return False
        endpoint_name = record.usage_metadata.get("endpoint_name")
        if self.endpoint_name is not None and endpoint_name != self.endpoint_name:
            return False
        return self.workspace_ids is None or record.workspace_id in self.workspace_ids


def live_records(
    source: Engine | Session,
    ctx: MeteringContext,
    now: datetime,
    filters: UsageFilters | None = None,
    *,
    backfill: timedelta = DEFAULT_BACKFILL,
) -> list[UsageRecord]:
    """The provisional records of the hours from `hour_floor(now) - backfill` through the
    open hour, as transient `UsageRecord`s (not added to any session)."""
    filters = filters or UsageFilters()
    start, end = hour_floor(now) - backfill, hour_floor(now) + HOUR
    if filters.start_time is not None:
        start = max(start, hour_floor(filters.start_time))
    if filters.end_time is not None:
        end = min(end, filters.end_time)
    if end <= start:
        return []
    with _connection(source) as connection:
        planned = plan_window(
            connection, ctx, start, hour_floor(end - timedelta.resolution) + HOUR, now
        )
    records = []
    for values in planned:
        values["record_id"] = LIVE_PREFIX + values["record_id"]
        record = UsageRecord(**values)
        if filters.accepts(record):
            records.append(record)
    return records


@contextmanager
def _connection(source: Engine | Session) -> Iterator[Connection]:
    if isinstance(source, Session):
        yield source.connection()
        return
    with source.connect() as connection:
        yield connection
