"""`run_metering`: the metering job (`moeserve billing run`, and the control plane's
scheduler), idempotent and restartable.

A run at `now` (injected; nothing here reads a clock) meters every hour from
`hour_floor(now - lookback)` up to the last *closed* hour: an hour closes `grace` after its
end (default 10 min, longer than a request or a ledger batch takes to land), so the usage of
an hour is complete when it is first written and corrections stay rare. The open hour and
hours within their grace are never stored: `live.live_records` computes them on the fly for
the usage listing (a request shows up there as soon as its ledger row is committed). Usage
that lands after its hour closed — but within `lookback` — is corrected by the next run
(RETRACTION + RESTATEMENT, see `corrections`); older late usage is not metered, so
`lookback` must exceed the worst lateness.

The whole run is one transaction: a run killed midway writes nothing, and its rerun plans the
same records as a clean run. On PostgreSQL a transaction-level advisory lock serializes
concurrent runs (several control-plane replicas); on SQLite the database's single writer does,
and deterministic record ids plus ON CONFLICT DO NOTHING make any overlap harmless.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.dialects import postgresql, sqlite

from billing.metering.capacity import measure_capacity
from billing.metering.context import MeteringContext
from billing.metering.corrections import (
    ORIGINAL,
    RESTATEMENT,
    RETRACTION,
    USAGE_RECORDS,
    plan_records,
    stored_keys,
)
from billing.metering.hours import hour_floor
from billing.metering.measures import Measures, add
from billing.metering.timeline import intervals_overlapping
from billing.metering.tokens import measure_tokens
from billing.placements import load_placements
from billing.tags import tags_of

DEFAULT_LOOKBACK = timedelta(days=2)
DEFAULT_GRACE = timedelta(minutes=10)
INSERT_BATCH = 1000
OnStored = Callable[[Connection, list[dict[str, Any]], datetime], None]
_ADVISORY_LOCK_KEY = 0x6D6F65_6D6574  # "moe" "met": one metering run at a time


@dataclass(frozen=True)
class MeteringReport:
    """What one run did: the hours metered, [window_start, window_end), and how many records
    of each type it inserted."""

    window_start: datetime
    window_end: datetime
    originals: int = 0
    retractions: int = 0
    restatements: int = 0

    @property
    def written(self) -> int:
        return self.originals + self.retractions + self.restatements


def run_metering(
    engine: Engine,
    ctx: MeteringContext,
    now: datetime,
    *,
    lookback: timedelta = DEFAULT_LOOKBACK,
    grace: timedelta = DEFAULT_GRACE,
    on_stored: OnStored | None = None,
) -> MeteringReport:
    """Meter every closed hour in the lookback window, in one transaction. `on_stored(
    connection, records, now)` runs in that transaction with the records it inserts (e.g.
    to queue their Stripe meter events): both commit, or neither."""
    if lookback <= timedelta(0) or grace < timedelta(0):
        raise ValueError("lookback must be > 0 and grace >= 0")
    start, end = hour_floor(now - lookback), hour_floor(now - grace)
    if end <= start:
        return MeteringReport(start, max(start, end))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY}
            )
        planned = plan_window(connection, ctx, start, end, now)
        _write(connection, planned)
        if on_stored is not None and planned:
            on_stored(connection, planned, now)
    counts = Counter(record["record_type"] for record in planned)
    return MeteringReport(start, end, counts[ORIGINAL], counts[RETRACTION], counts[RESTATEMENT])


def measure_window(
    connection: Connection, ctx: MeteringContext, start: datetime, end: datetime, now: datetime
) -> Measures:
    """The correct totals of every key with an hour in [start, end), as known at `now`."""
    intervals = intervals_overlapping(connection, start, end)
    measures = measure_tokens(connection, ctx, start, end)
    for key, measure in measure_capacity(ctx, intervals, start, end, now).items():
        add(measures, key, measure)
    return measures


def plan_window(
    connection: Connection, ctx: MeteringContext, start: datetime, end: datetime, now: datetime
) -> list[dict[str, Any]]:
    """The records a run at `now` inserts for the hours in [start, end). Each workspace's
    records name the SKUs and cloud of where it lives (read once per run)."""
    if ctx.placements is None:
        ctx = replace(ctx, placements=load_placements(connection, ctx.cloud, ctx.region))
    measured = measure_window(connection, ctx, start, end, now)
    stored = stored_keys(connection, start, end)
    tags = tags_of(connection, {key.endpoint_id for key in measured.keys() | stored.keys()})
    return plan_records(
        measured, stored, cloud=lambda workspace: ctx.where(workspace)[0], now=now, tags=tags
    )


def _write(connection: Connection, records: list[dict[str, Any]]) -> None:
    dialect = connection.dialect.name
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(USAGE_RECORDS)
    statement = insert.on_conflict_do_nothing(index_elements=["record_id"])
    for offset in range(0, len(records), INSERT_BATCH):
        connection.execute(statement, records[offset : offset + INSERT_BATCH])
