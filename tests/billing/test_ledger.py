"""The usage ledger on a migrated database (SQLite file and a fresh PostgreSQL database):
durability on return, group commit, idempotency by request id, failure and recovery, flush on
close, payload capping, and the 0002 migration's downgrade."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError

from bench.scratch_db import migrated_engine, scratch_postgres
from billing.db import BillingBase
from billing.ledger import (
    TRUNCATION_MARKER,
    EndpointUsage,
    InferenceLog,
    InferencePayload,
    LedgerClosedError,
    LedgerWriteError,
    UsageLedger,
    UsageRow,
    cap_text,
)
from billing.ledger.rows import inference_params
from control_plane.db import upgrade
from control_plane.db.migrate import alembic_config

USAGE_TABLE = BillingBase.metadata.tables[EndpointUsage.__tablename__]
INFERENCE_TABLE = BillingBase.metadata.tables[InferenceLog.__tablename__]
REQUEST_TIME = datetime(2026, 11, 27, 10, 30, 15, 123456, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Engine]:
    """A database migrated to head, as the control plane leaves it on start."""
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


def usage(request_id: str, **overrides: Any) -> UsageRow:
    values: dict[str, Any] = {
        "databricks_request_id": request_id,
        "client_request_id": f"client-{request_id}",
        "requester": "alice@example.com",
        "status_code": 200,
        "request_time": REQUEST_TIME,
        "served_entity_id": "dbrx-tiny-1",
        "entity_name": "dbrx-tiny",
        "entity_version": "1",
        "model_family": "dbrx",
        "workload_type": "CPU",
        "endpoint_name": "chat",
        "endpoint_id": "ep0123456789",
        "workspace_id": "ws0123456789",
        "account_id": "acct0123456789",
        "input_token_count": 11,
        "output_token_count": 29,
        "request_streaming": True,
        "usage_context": {"project": "billing-tests"},
    }
    values.update(overrides)
    return UsageRow(**values)


def usage_rows(engine: Engine) -> list[Any]:
    table = USAGE_TABLE
    with engine.connect() as connection:
        return list(connection.execute(select(table).order_by(table.c.databricks_request_id)))


def inference_rows(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(select(INFERENCE_TABLE)))


def test_a_row_is_committed_with_every_field_when_record_returns(engine: Engine) -> None:
    shared = usage("req-shared", workspace_id=None, client_request_id=None, usage_context=None)

    async def scenario() -> None:
        async with UsageLedger(engine) as ledger:
            await ledger.record(usage("req-1"))
            # No await between the return and the read: the row must already be committed.
            rows = usage_rows(engine)
            assert len(rows) == 1
            assert rows[0]._asdict() == usage("req-1").as_params()
            assert rows[0].request_time.tzinfo is not None
            await ledger.record(shared)

    asyncio.run(scenario())
    assert usage_rows(engine)[1]._asdict() == shared.as_params()


def test_rows_are_stored_exactly_as_a_sqlalchemy_insert_stores_them(engine: Engine) -> None:
    # The ledger runs its INSERTs as driver SQL with values converted by the column types;
    # the bytes in the database must be what a Core insert of the same row would store.
    rows = [
        usage("req-ledger-a"),
        usage("req-ledger-b", workspace_id=None, client_request_id=None, usage_context=None),
    ]
    payload = InferencePayload(request='{"messages": []}', response=None)

    async def scenario() -> None:
        async with UsageLedger(engine) as ledger:
            await ledger.record(rows[0], payload)
            await ledger.record(rows[1])

    asyncio.run(scenario())
    with engine.begin() as connection:
        for row in rows:
            params = row.as_params()
            params["databricks_request_id"] = row.databricks_request_id.replace("ledger", "core")
            connection.execute(USAGE_TABLE.insert(), params)
        connection.execute(
            INFERENCE_TABLE.insert(),
            inference_params(rows[0], payload, 1024) | {"databricks_request_id": "req-core-a"},
        )

    for table in ("endpoint_usage", "inference_log"):
        with engine.connect() as connection:  # the driver's values, no result processing
            result = connection.exec_driver_sql(f"SELECT * FROM {table}")
            key = list(result.keys()).index("databricks_request_id")
            stored = {row[key]: (*row[:key], *row[key + 1 :]) for row in result}
        written_by_ledger = [request_id for request_id in stored if "ledger" in request_id]
        assert len(written_by_ledger) == (2 if table == "endpoint_usage" else 1)
        for request_id in written_by_ledger:
            assert stored[request_id] == stored[request_id.replace("ledger", "core")], table


def test_concurrent_records_are_group_committed_in_few_transactions(engine: Engine) -> None:
    async def scenario() -> UsageLedger:
        async with UsageLedger(engine, max_batch=500) as ledger:
            await asyncio.gather(*(ledger.record(usage(f"req-{i:04}")) for i in range(1000)))
        return ledger

    ledger = asyncio.run(scenario())
    assert len(usage_rows(engine)) == 1000
    assert ledger.rows_committed == 1000
    assert ledger.batches_committed == 2  # max_batch caps a transaction
    assert ledger.batches_failed == 0


def test_max_delay_groups_rows_that_trickle_in(engine: Engine) -> None:
    # Without a delay a fast disk commits rows arriving every 0.3 ms nearly one by one;
    # waiting 20 ms per batch bounds the transactions by time, not by rows.
    async def scenario() -> UsageLedger:
        async with UsageLedger(engine, max_batch=500, max_delay_s=0.02) as ledger:

            async def later(i: int) -> None:
                await asyncio.sleep(random.uniform(0, 0.3))
                await ledger.record(usage(f"req-{i:04}"))

            await asyncio.gather(*(later(i) for i in range(1000)))
        return ledger

    ledger = asyncio.run(scenario())
    print(f"\n{ledger.batches_committed} transactions for 1,000 trickling records")
    assert len(usage_rows(engine)) == 1000
    assert ledger.batches_committed < 100


def test_a_repeated_request_id_keeps_the_first_row_and_both_calls_return(
    engine: Engine,
) -> None:
    async def scenario() -> None:
        async with UsageLedger(engine) as ledger:
            # Within one batch ...
            await asyncio.gather(
                ledger.record(usage("req-1"), InferencePayload('{"n": 1}', "first")),
                ledger.record(
                    usage("req-1", output_token_count=99), InferencePayload('{"n": 2}', "again")
                ),
            )
            assert ledger.batches_committed == 1
            # ... and across batches.
            await ledger.record(usage("req-1", input_token_count=77))
            await ledger.record(usage("req-1"), InferencePayload('{"n": 3}', "third"))
            assert ledger.batches_committed == 3

    asyncio.run(scenario())
    rows = usage_rows(engine)
    assert [row._asdict() for row in rows] == [usage("req-1").as_params()]
    logged = inference_rows(engine)
    assert [(row.request, row.response) for row in logged] == [('{"n": 1}', "first")]


def test_a_failed_batch_raises_for_every_row_and_later_batches_succeed(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    table = USAGE_TABLE

    async def scenario() -> UsageLedger:
        async with UsageLedger(engine) as ledger:
            await ledger.record(usage("before"))
            table.drop(engine)
            outcomes = await asyncio.gather(
                *(ledger.record(usage(f"lost-{i}")) for i in range(5)), return_exceptions=True
            )
            for outcome in outcomes:
                assert isinstance(outcome, LedgerWriteError), outcome
                assert isinstance(outcome.__cause__, DBAPIError), outcome.__cause__
                # Whoever logs the cause logs no row values (hide_parameters on the engine).
                assert "alice@example.com" not in str(outcome.__cause__)
            assert ledger.batches_failed == 1
            table.create(engine)
            await ledger.record(usage("after"))
        return ledger

    ledger = asyncio.run(scenario())
    assert [row.databricks_request_id for row in usage_rows(engine)] == ["after"]
    assert (ledger.batches_committed, ledger.batches_failed) == (2, 1)
    # The failure is logged without the rows' values (callers' data, possibly several
    # tenants' in one batch).
    failure_logs = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert failure_logs
    assert not any("lost-" in line or "alice@example.com" in line for line in failure_logs)


def test_close_flushes_rows_still_waiting_for_their_batch(engine: Engine) -> None:
    async def scenario() -> None:
        # A long linger: only close() can make this batch commit promptly.
        ledger = UsageLedger(engine, max_batch=1000, max_delay_s=60)
        ledger.start()
        waiting = [asyncio.create_task(ledger.record(usage(f"req-{i}"))) for i in range(10)]
        cancelled = asyncio.create_task(ledger.record(usage("req-cancelled")))
        await asyncio.sleep(0.05)
        cancelled.cancel()  # the request happened: its row is still written
        started = time.monotonic()
        await ledger.close()
        assert time.monotonic() - started < 10
        await asyncio.wait_for(asyncio.gather(*waiting), timeout=5)
        with pytest.raises(LedgerClosedError):
            await ledger.record(usage("too-late"))

    asyncio.run(scenario())
    assert len(usage_rows(engine)) == 11


def test_a_full_batch_is_written_without_waiting_for_max_delay(engine: Engine) -> None:
    async def scenario() -> None:
        async with UsageLedger(engine, max_batch=5, max_delay_s=60) as ledger:
            started = time.monotonic()
            first = asyncio.create_task(ledger.record(usage("req-0")))
            await asyncio.sleep(0.05)  # the writer now lingers for companions
            assert not first.done()
            await asyncio.gather(first, *(ledger.record(usage(f"req-{i}")) for i in range(1, 5)))
            assert time.monotonic() - started < 10
            assert ledger.batches_committed == 1

    asyncio.run(scenario())


def test_payloads_are_capped_in_bytes_and_flagged(engine: Engine) -> None:
    big_request = '{"prompt": "' + "é" * 1000 + '"}'

    async def scenario() -> None:
        async with UsageLedger(engine, max_payload_bytes=101) as ledger:
            await ledger.record(usage("req-1"), InferencePayload(big_request, None))
            await ledger.record(usage("req-2"), InferencePayload("ok\x00", "short"))

    asyncio.run(scenario())
    logged = {row.databricks_request_id: row for row in inference_rows(engine)}
    capped = logged["req-1"]
    assert capped.request.endswith(TRUNCATION_MARKER)
    assert len(capped.request.encode()) <= 101
    assert big_request.startswith(capped.request.removesuffix(TRUNCATION_MARKER))
    assert (capped.request_truncated, capped.response, capped.response_truncated) == (
        True,
        None,
        False,
    )
    small = logged["req-2"]
    assert (small.request, small.response, small.request_truncated) == ("ok\ufffd", "short", False)
    assert (small.endpoint_id, small.status_code, small.request_time) == (
        "ep0123456789",
        200,
        REQUEST_TIME,
    )


def test_cap_text_never_splits_a_character() -> None:
    marker_bytes = len(TRUNCATION_MARKER.encode())
    assert cap_text("abc", marker_bytes) == ("abc", False)
    text, cut = cap_text("€" * 10, marker_bytes + 5)  # room for one 3-byte character, not two
    assert (text, cut) == ("€" + TRUNCATION_MARKER, True)
    assert cap_text("lone \ud800 surrogate", 100) == ("lone ? surrogate", False)
    with pytest.raises(ValueError):
        cap_text("x", marker_bytes - 1)


@pytest.mark.parametrize(
    "overrides",
    [
        {"request_time": datetime(2026, 1, 1)},
        {"databricks_request_id": "x" * 65},
        {"databricks_request_id": ""},
        {"output_token_count": -1},
        {"status_code": 42},
        {"endpoint_name": "n" * 64},
    ],
)
def test_rows_that_cannot_be_stored_are_rejected_when_built(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        usage("req-1", **overrides)


def test_recording_needs_a_started_ledger(engine: Engine) -> None:
    async def scenario() -> None:
        with pytest.raises(LedgerClosedError):
            await UsageLedger(engine).record(usage("req-1"))

    asyncio.run(scenario())


def test_migration_0002_downgrade_drops_the_ledger_tables(engine: Engine) -> None:
    def migrate(step: Any, revision: str) -> None:
        config = alembic_config(engine)
        with engine.connect() as connection:
            config.attributes["connection"] = connection
            step(config, revision)
            connection.commit()

    migrate(command.downgrade, "0001")
    tables = set(inspect(engine).get_table_names())
    assert {"endpoint_usage", "inference_log"}.isdisjoint(tables)
    assert "endpoints" in tables
    upgrade(engine)
    assert {"endpoint_usage", "inference_log"} <= set(inspect(engine).get_table_names())


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_ledger_throughput_on_postgresql(pg_engine: Engine) -> None:
    """Prints rows/s for 5,000 concurrent records, against a one-commit-per-row baseline and
    the ceiling of one bulk insert in a single transaction, each on an emptied table with the
    same statement (run with -s to see it). The garbage collector is paused while timing: a
    full collection of this process's large heap (torch, the app) would land in one of the
    three at random."""
    rows = [usage(f"req-{i:05}") for i in range(5000)]
    table = USAGE_TABLE
    statement = postgresql.insert(table).on_conflict_do_nothing()

    def emptied() -> None:
        with pg_engine.begin() as connection:
            connection.execute(text("TRUNCATE endpoint_usage"))

    baseline = rows[:500]
    with gc_paused():
        started = time.perf_counter()
        for row in baseline:
            with pg_engine.begin() as connection:
                connection.execute(statement, [row.as_params()])
        per_row_rate = len(baseline) / (time.perf_counter() - started)

    emptied()
    with gc_paused():
        started = time.perf_counter()
        with pg_engine.begin() as connection:
            connection.execute(statement, [row.as_params() for row in rows])
        bulk_rate = len(rows) / (time.perf_counter() - started)

    emptied()

    async def ledger_run() -> float:
        async with UsageLedger(pg_engine, max_batch=1000) as ledger:
            started = time.perf_counter()
            await asyncio.gather(*(ledger.record(row) for row in rows))
            return time.perf_counter() - started

    with gc_paused():
        ledger_rate = len(rows) / asyncio.run(ledger_run())
    assert len(usage_rows(pg_engine)) == 5000
    print(
        f"\nledger: {ledger_rate:,.0f} rows/s for 5,000 concurrent records "
        f"({ledger_rate / per_row_rate:.1f}x one commit per row at {per_row_rate:,.0f} rows/s; "
        f"{ledger_rate / bulk_rate:.0%} of one bulk insert at {bulk_rate:,.0f} rows/s)"
    )


def test_a_database_restart_between_batches_costs_no_row(pg_engine: Engine) -> None:
    # The writer keeps its connection between batches. When the server drops it (a restart,
    # an idle timeout), the next batch must go through on a fresh connection, not fail.
    async def scenario() -> None:
        async with UsageLedger(pg_engine) as ledger:
            await ledger.record(usage("req-before"))
            with pg_engine.begin() as connection:
                terminated = connection.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).scalar_one()
            assert terminated >= 1  # the writer's connection was among them
            await ledger.record(usage("req-after"))
            assert ledger.batches_failed == 0

    asyncio.run(scenario())
    assert [row.databricks_request_id for row in usage_rows(pg_engine)] == [
        "req-after",
        "req-before",
    ]
