"""Requests in flight in the usage ledger (issue 14, finding 5), on SQLite and PostgreSQL:
an accepted request is on record from admission (`usage_checkpoints`), its checkpoints keep
its delivered usage there, its final row replaces it in one transaction, and the rows a dead
process left are settled once each, as interrupted, from their last checkpoint — never
doubled, and priced once by metering."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from bench.scratch_db import migrated_engine, scratch_postgres
from billing.db import BillingBase
from billing.ledger import (
    INTERRUPTED_STATUS,
    LedgerWriteError,
    UsageCheckpoint,
    UsageLedger,
    settle_interrupted,
)
from billing.metering import run_metering
from tests.billing.test_ledger import usage as ledger_usage
from tests.billing.test_ledger import usage_rows
from tests.billing.test_metering_helpers import DBRX_IN, DBRX_OUT, context, records, total

CHECKPOINTS = BillingBase.metadata.tables[UsageCheckpoint.__tablename__]
T0 = datetime(2026, 11, 27, 9, 20, tzinfo=UTC)
STALE = timedelta(seconds=60)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Engine]:
    if request.param == "sqlite":
        with migrated_engine(f"sqlite:///{tmp_path / 'ledger.db'}") as engine:
            yield engine
        return
    with scratch_postgres("moeserve_test") as url, migrated_engine(url) as engine:
        yield engine


@pytest.fixture
def pg_engine() -> Iterator[Engine]:
    with scratch_postgres("moeserve_test") as url, migrated_engine(url) as engine:
        yield engine


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def checkpoint_rows(engine: Engine) -> dict[str, Any]:
    with engine.connect() as connection:
        rows = connection.execute(select(CHECKPOINTS)).all()
    return {row.databricks_request_id: row for row in rows}


def usage(request_id: str, **overrides: Any) -> Any:
    """A usage row of a request admitted at T0."""
    return ledger_usage(request_id, **({"request_time": T0} | overrides))


def open_row(request_id: str, **overrides: Any) -> Any:
    """A request as it stands at admission: nothing used yet."""
    return usage(request_id, input_token_count=0, output_token_count=0, **overrides)


def stale_checkpoints(engine: Engine, rows: list[Any], updated_at: datetime) -> None:
    """Checkpoint rows as a dead process left them."""
    params = [
        {name: value for name, value in row.as_params().items() if name != "status_code"}
        | {"owner": "dead", "updated_at": updated_at}
        for row in rows
    ]
    with engine.begin() as connection:
        connection.execute(CHECKPOINTS.insert(), params)


async def barrier(ledger: UsageLedger, name: str) -> None:
    """Everything queued before is committed once a later record returns (one writer, FIFO)."""
    await ledger.record(usage(f"barrier-{name}"))


def test_an_open_request_is_on_record_and_its_checkpoints_keep_its_usage(engine: Engine) -> None:
    clock = Clock()

    async def scenario() -> None:
        async with UsageLedger(engine, owner="process-a", clock=clock) as ledger:
            await ledger.open(open_row("req-1"))
            # No await between the return and the read: the row must already be committed.
            [row] = checkpoint_rows(engine).values()
            assert (row.input_token_count, row.output_token_count) == (0, 0)
            assert (row.owner, row.updated_at, row.request_time) == ("process-a", T0, T0)
            assert row.usage_context == {"project": "billing-tests"}
            clock.advance(1)
            # Queued checkpoints of one request collapse into the latest; the entity that
            # answered (a fallback, say) replaces the one admitted.
            ledger.checkpoint(usage("req-1", input_token_count=11, output_token_count=3))
            ledger.checkpoint(usage("req-1", input_token_count=11, output_token_count=19))
            ledger.checkpoint(
                usage("req-1", input_token_count=11, output_token_count=35, entity_version="2")
            )
            ledger.checkpoint(usage("never-opened", output_token_count=7))  # ignored
            await barrier(ledger, "1")
            rows = checkpoint_rows(engine)
            assert set(rows) == {"req-1"}
            row = rows["req-1"]
            assert (row.input_token_count, row.output_token_count) == (11, 35)
            assert (row.entity_version, row.updated_at) == ("2", T0 + timedelta(seconds=1))
            assert ledger.open_requests == 1

    asyncio.run(scenario())


def test_the_final_row_replaces_the_checkpoint_in_one_transaction(engine: Engine) -> None:
    async def scenario() -> None:
        async with UsageLedger(engine) as ledger:
            await ledger.open(open_row("done"))
            await ledger.open(open_row("refused"))
            ledger.checkpoint(usage("refused", output_token_count=12))
            await ledger.record(usage("done", output_token_count=40))
            assert set(checkpoint_rows(engine)) == {"refused"}
            # The final row cannot be stored (UTF-8 cannot encode a lone surrogate): its
            # transaction rolls back, so the checkpoint row stays, to be settled later.
            outcomes = await asyncio.gather(
                ledger.record(usage("refused", entity_version="1\ud800", output_token_count=20)),
                ledger.record(usage("bystander")),
                return_exceptions=True,
            )
            assert isinstance(outcomes[0], LedgerWriteError) and outcomes[1] is None
            assert ledger.open_requests == 0  # a failed record is no longer kept fresh

    asyncio.run(scenario())
    rows = {row.databricks_request_id: row for row in usage_rows(engine)}
    assert set(rows) == {"done", "bystander"}
    assert rows["done"].output_token_count == 40 and rows["done"].status_code == 200
    [left] = checkpoint_rows(engine).values()
    assert (left.databricks_request_id, left.output_token_count) == ("refused", 12)


def test_a_dead_process_requests_are_settled_once_from_their_last_checkpoint(
    engine: Engine,
) -> None:
    clock = Clock()

    async def dead_process() -> None:
        ledger = UsageLedger(engine, owner="dead", clock=clock)
        ledger.start()
        for i in range(3):
            await ledger.open(open_row(f"cut-{i}"))
            ledger.checkpoint(usage(f"cut-{i}", input_token_count=11, output_token_count=16 * i))
        await barrier(ledger, "dead")
        ledger._task.cancel()  # type: ignore[union-attr]  # killed: nothing more is written
        await asyncio.gather(ledger._task, return_exceptions=True)  # type: ignore[arg-type]

    asyncio.run(dead_process())
    # Already billed: a stale checkpoint whose request has its row is never billed again.
    stale_checkpoints(engine, [usage("barrier-dead", output_token_count=999)], T0)
    assert settle_interrupted(engine, T0) == 0  # updated at T0: not before it
    assert settle_interrupted(engine, T0 + STALE) == 4
    assert settle_interrupted(engine, T0 + STALE) == 0  # a second pass finds nothing
    assert checkpoint_rows(engine) == {}
    rows = {row.databricks_request_id: row for row in usage_rows(engine)}
    assert set(rows) == {"barrier-dead", "cut-0", "cut-1", "cut-2"}
    assert rows["barrier-dead"].output_token_count == 29  # the first row stays
    for i in range(3):
        row = rows[f"cut-{i}"]
        assert row.status_code == INTERRUPTED_STATUS
        assert (row.input_token_count, row.output_token_count) == (11, 16 * i)
        assert row.request_time == T0 and row.request_streaming is True
        assert row.client_request_id == f"client-cut-{i}"
        assert row.usage_context == {"project": "billing-tests"}


def test_a_live_process_keeps_its_rows_fresh_and_a_late_record_never_doubles(
    engine: Engine,
) -> None:
    clock = Clock()

    async def scenario() -> None:
        async with UsageLedger(engine, owner="live", clock=clock) as ledger:
            await ledger.open(open_row("long-stream"))
            ledger.checkpoint(usage("long-stream", output_token_count=5))
            clock.advance(45)
            ledger.heartbeat()  # no tokens for 45 s: the heartbeat says it is alive
            await barrier(ledger, "1")
            clock.advance(45)
            assert await ledger.settle_interrupted(STALE) == 0
            # Its heartbeats stop (a stalled process) and another process settles it ...
            clock.advance(STALE.total_seconds())
            assert settle_interrupted(engine, clock.now - STALE) == 1
            # ... then the request ends after all: its checkpoints and final row change
            # nothing, and the caller is not failed for it.
            ledger.checkpoint(usage("long-stream", output_token_count=30))
            await ledger.record(usage("long-stream", output_token_count=40))

    asyncio.run(scenario())
    rows = [row for row in usage_rows(engine) if row.databricks_request_id == "long-stream"]
    assert [(r.status_code, r.output_token_count) for r in rows] == [(INTERRUPTED_STATUS, 5)]
    assert checkpoint_rows(engine) == {}


def test_concurrent_settlers_settle_each_request_exactly_once(pg_engine: Engine) -> None:
    orphans = [usage(f"orphan-{i:03}", output_token_count=i) for i in range(300)]
    stale_checkpoints(pg_engine, orphans, T0)
    settled: list[int] = []
    start = threading.Barrier(4)

    def settle() -> None:
        start.wait()
        settled.append(settle_interrupted(pg_engine, T0 + STALE))

    threads = [threading.Thread(target=settle) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(settled) == 300
    with pg_engine.connect() as connection:
        count = connection.execute(select(func.count()).select_from(CHECKPOINTS)).scalar()
    assert count == 0
    rows = usage_rows(pg_engine)
    assert len(rows) == 300 == len({row.databricks_request_id for row in rows})
    assert sum(row.output_token_count for row in rows) == sum(range(300))


def test_a_lazy_open_is_written_only_for_a_request_still_running(engine: Engine) -> None:
    async def scenario() -> None:
        async with UsageLedger(engine, checkpoint_interval_s=0.05) as ledger:
            ledger.open_later("quick", lambda: open_row("quick"))
            await ledger.record(usage("quick"))  # answered within the interval
            ledger.open_later("slow", lambda: open_row("slow"))
            await asyncio.sleep(0.2)
            await barrier(ledger, "1")
            assert set(checkpoint_rows(engine)) == {"slow"}  # "quick" was never written
            await ledger.record(usage("slow"))
            assert checkpoint_rows(engine) == {}
            ledger.checkpoint_interval_s = 60.0
            ledger.open_later("running-at-shutdown", lambda: open_row("running-at-shutdown"))
        # Closing puts the requests still running on record (the next start settles them).

    asyncio.run(scenario())
    assert set(checkpoint_rows(engine)) == {"running-at-shutdown"}
    assert {row.databricks_request_id for row in usage_rows(engine)} == {
        "quick",
        "slow",
        "barrier-1",
    }


def test_metering_prices_a_settled_request_once(engine: Engine) -> None:
    """A request settled after its hour was metered restates that hour, exactly once."""
    ctx = context()
    with engine.begin() as connection:
        connection.execute(
            BillingBase.metadata.tables["endpoint_usage"].insert(),
            usage(
                "served", request_time=T0, input_token_count=20, output_token_count=16
            ).as_params(),
        )
    cut = usage("cut", input_token_count=100, output_token_count=48)
    stale_checkpoints(engine, [cut], T0 + timedelta(minutes=1))
    now = T0 + timedelta(hours=2)
    run_metering(engine, ctx, now)  # hour 9 closed and stored without the cut request
    assert settle_interrupted(engine, now - STALE) == 1
    report = run_metering(engine, ctx, now + timedelta(minutes=5))
    assert (report.originals, report.retractions, report.restatements) == (0, 1, 1)
    expected = ((20 + 100) * DBRX_IN + (16 + 48) * DBRX_OUT) / 1_000_000
    assert total(records(engine)) == expected
    assert settle_interrupted(engine, now) == 0
    assert run_metering(engine, ctx, now + timedelta(minutes=10)).written == 0
    assert total(records(engine)) == expected
