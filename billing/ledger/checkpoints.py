"""Requests in flight, and settling those a dead process left open.

Every accepted request gets a `usage_checkpoints` row (`UsageLedger.open`), which its
checkpoints keep up to date with the tokens delivered so far (`UsageLedger.checkpoint`);
the transaction that inserts the request's `endpoint_usage` row deletes it
(`UsageLedger.record`). A process killed mid-request (kill -9, OOM, power) leaves its rows
behind, and they stop being refreshed: each live ledger refreshes its own rows' `updated_at`
every `stale_after / 4` or so (`UsageLedger.heartbeat`), so a row older than the stale bound
belongs to a process that is gone.

`settle_interrupted` turns each such row into the request's `endpoint_usage` row, its usage
the last checkpoint's and its status `INTERRUPTED_STATUS`, and deletes it, in one
transaction:

- never doubled: the row is deleted (`DELETE ... RETURNING`) before its usage row is
  inserted, and the insert is `ON CONFLICT DO NOTHING` on the request id. Two settlers, or a
  settler and a live writer finishing the same request, serialize on the checkpoint row
  (PostgreSQL row lock, SQLite's single writer): whoever deletes it first writes the one
  usage row, the other deletes nothing and inserts nothing (the writer, too, deletes a
  request's checkpoint before inserting its row, so both lock in the same order);
- priced once: the settled row is an ordinary `endpoint_usage` row with the request's
  admission time, which metering prices like any other (a late row in a closed hour is a
  RETRACTION plus RESTATEMENT within the metering look-back).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete
from sqlalchemy.dialects import postgresql, sqlite

from billing.db import BillingBase
from billing.ledger.models import EndpointUsage, UsageCheckpoint

# The status of a usage row settled from a checkpoint: the process serving the request died
# before it ended (not an HTTP status anyone was sent; 520 is what some proxies answer when
# the origin failed in an unknown way). Its tokens are those delivered up to the request's
# last checkpoint.
INTERRUPTED_STATUS = 520

_CHECKPOINTS = BillingBase.metadata.tables[UsageCheckpoint.__tablename__]
_USAGE = BillingBase.metadata.tables[EndpointUsage.__tablename__]
# Every usage column but the status, the duration and the guardrails' effect (unknown for a
# request whose process died) is carried by the checkpoint row.
_ENDED_COLUMNS = ("status_code", "execution_duration_ms", "guardrail_hits", "guardrail_outcome")
CARRIED_COLUMNS = tuple(c.name for c in _USAGE.columns if c.name not in _ENDED_COLUMNS)


def settle_interrupted(engine: Engine, stale_before: datetime) -> int:
    """Settle every checkpoint row last updated before `stale_before` as an interrupted
    request (one transaction; safe to run in several processes at once, or twice). Returns
    how many rows it settled."""
    with engine.begin() as connection:
        return settle_on(connection, stale_before)


def settle_on(connection: Connection, stale_before: datetime) -> int:
    """`settle_interrupted` inside the caller's transaction."""
    taken = connection.execute(
        delete(_CHECKPOINTS)
        .where(_CHECKPOINTS.c.updated_at < stale_before)
        .returning(*(_CHECKPOINTS.c[name] for name in CARRIED_COLUMNS))
    ).all()
    if not taken:
        return 0
    rows: list[dict[str, Any]] = [
        {**row._asdict(), "status_code": INTERRUPTED_STATUS} for row in taken
    ]
    dialect = connection.dialect.name
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(_USAGE)
    connection.execute(
        insert.on_conflict_do_nothing(index_elements=[_USAGE.c.databricks_request_id]), rows
    )
    return len(rows)
