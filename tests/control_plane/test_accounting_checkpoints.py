"""`Accounting` puts an accepted request on record at admission and checkpoints a stream's
delivered usage while it runs (issue 14, finding 5), on SQLite and PostgreSQL: a stream is
on record before it is dispatched; a process that dies mid-stream loses at most one
checkpoint interval of delivered tokens, once the next process settles its rows; a quick
non-streaming answer costs no checkpoint write, a slow one is on record while it runs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select

from bench.scratch_db import migrated_engine, scratch_postgres
from billing.db import BillingBase
from billing.ledger import INTERRUPTED_STATUS, UsageCheckpoint, UsageLedger, UsageRow
from control_plane.query.accounting import CLIENT_CLOSED, Accounting
from control_plane.query.metrics import GatewayMetrics
from control_plane.query.ratelimit.in_process import InProcessRateLimiter
from tests.control_plane.domain_factories import endpoint_config, query_target, served_entity
from workers.engine.request import Usage

CHECKPOINTS = BillingBase.metadata.tables[UsageCheckpoint.__tablename__]
USAGE = BillingBase.metadata.tables["endpoint_usage"]
EVERY_TOKENS = 16
PROMPT = 23
ENTITY = served_entity("e")
TARGET = query_target(endpoint_config(ENTITY))


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Engine]:
    if request.param == "sqlite":
        with migrated_engine(f"sqlite:///{tmp_path / 'accounting.db'}") as engine:
            yield engine
        return
    with scratch_postgres("moeserve_test") as url, migrated_engine(url) as engine:
        yield engine


def accounting(ledger: UsageLedger, request_id: str, *, streaming: bool) -> Accounting:
    return Accounting(
        request_id=request_id,
        target=TARGET,
        entity=ENTITY,
        streaming=streaming,
        client_request_id=f"client-{request_id}",
        usage_context=None,
        reservation=None,
        request_time=datetime.now(UTC),
        request_payload=None,
        ledger=ledger,
        limiter=InProcessRateLimiter(),
        metrics=GatewayMetrics(),
    )


def checkpoints(engine: Engine) -> dict[str, Any]:
    with engine.connect() as connection:
        return {r.databricks_request_id: r for r in connection.execute(select(CHECKPOINTS))}


def usage_rows(engine: Engine) -> dict[str, Any]:
    with engine.connect() as connection:
        return {r.databricks_request_id: r for r in connection.execute(select(USAGE))}


async def committed(ledger: UsageLedger, name: str) -> None:
    """Wait until everything queued so far is committed (one writer, FIFO)."""
    barrier = UsageRow(
        databricks_request_id=f"barrier-{name}",
        requester="tester",
        status_code=200,
        request_time=datetime.now(UTC),
        served_entity_id="e",
        entity_name="dbrx-tiny",
        entity_version="1",
        model_family="dbrx",
        workload_type="CPU",
        endpoint_name="e",
        endpoint_id="ep",
        account_id="acct",
        input_token_count=0,
        output_token_count=0,
        request_streaming=False,
    )
    await ledger.record(barrier)


def test_a_killed_stream_is_billed_up_to_its_last_checkpoint_and_no_further(
    engine: Engine,
) -> None:
    delivered: dict[str, int] = {}

    async def stream(ledger: UsageLedger, request_id: str, tokens: int) -> None:
        async with accounting(ledger, request_id, streaming=True) as acc:
            # On record before dispatch: no token can be delivered before this.
            assert request_id in checkpoints(engine)
            acc.prompt_processed(Usage(PROMPT, 1))
            for n in range(1, tokens + 1):
                acc.delivered(Usage(PROMPT, n), {0: f" t{n}"})
                delivered[request_id] = n
                await asyncio.sleep(0.002)
            await asyncio.Event().wait()  # the process dies before the stream ends

    async def killed_process() -> None:
        ledger = UsageLedger(engine, checkpoint_tokens=EVERY_TOKENS, checkpoint_interval_s=60)
        ledger.start()
        streams = [
            asyncio.create_task(stream(ledger, f"s{i}", tokens))
            for i, tokens in enumerate((0, 1, 15, 16, 17, 40, 100))
        ]
        while len(delivered) < len(streams) - 1 or sum(delivered.values()) < 189:
            await asyncio.sleep(0.01)
        await committed(ledger, "last-checkpoints")
        # kill -9: the writer stops mid-flight and no stream's final row is ever written.
        assert ledger._task is not None
        ledger._task.cancel()
        await asyncio.gather(ledger._task, return_exceptions=True)
        for task in streams:
            task.cancel()
        await asyncio.gather(*streams, return_exceptions=True)

    asyncio.run(killed_process())
    assert set(checkpoints(engine)) == {f"s{i}" for i in range(7)}
    assert {r for r in usage_rows(engine) if r.startswith("s")} == set()

    async def restarted_process() -> int:
        later = lambda: datetime.now(UTC) + timedelta(minutes=5)  # noqa: E731
        async with UsageLedger(engine, clock=later) as ledger:
            return await ledger.settle_interrupted(timedelta(seconds=60))

    assert asyncio.run(restarted_process()) == 7
    rows = usage_rows(engine)
    assert checkpoints(engine) == {}
    for i in range(7):
        row, sent = rows[f"s{i}"], delivered.get(f"s{i}", 0)
        assert row.status_code == INTERRUPTED_STATUS
        assert row.input_token_count == PROMPT  # the prompt counts from the first chunk
        assert sent - EVERY_TOKENS < row.output_token_count <= sent, (i, sent, row)
        assert row.output_token_count == sent // EVERY_TOKENS * EVERY_TOKENS


def test_a_stream_that_ends_leaves_its_row_and_no_checkpoint(engine: Engine) -> None:
    async def scenario() -> None:
        async with UsageLedger(engine, checkpoint_tokens=EVERY_TOKENS) as ledger:
            async with accounting(ledger, "whole", streaming=True) as acc:
                acc.prompt_processed(Usage(PROMPT, 1))
                for n in range(1, 51):
                    acc.delivered(Usage(PROMPT, n))
                    await asyncio.sleep(0)
            assert checkpoints(engine) == {}
            assert ledger.open_requests == 0

    asyncio.run(scenario())
    row = usage_rows(engine)["whole"]
    assert (row.status_code, row.input_token_count, row.output_token_count) == (200, PROMPT, 50)


def test_a_stream_cancelled_while_it_is_put_on_record_is_recorded_once(engine: Engine) -> None:
    async def scenario() -> None:
        async with UsageLedger(engine) as ledger:

            async def stream() -> None:
                async with accounting(ledger, "gone", streaming=True):
                    await asyncio.Event().wait()

            task = asyncio.create_task(stream())
            await asyncio.sleep(0)  # inside `open`, waiting for its commit
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await committed(ledger, "after")

    asyncio.run(scenario())
    assert usage_rows(engine)["gone"].status_code == CLIENT_CLOSED
    assert checkpoints(engine) == {}


def test_a_non_streaming_request_is_on_record_only_while_it_runs_long(engine: Engine) -> None:
    async def scenario() -> None:
        async with UsageLedger(engine, checkpoint_interval_s=0.1) as ledger:
            async with accounting(ledger, "quick", streaming=False) as acc:
                acc.delivered(Usage(PROMPT, 9))
            async with accounting(ledger, "slow", streaming=False) as acc:
                await asyncio.sleep(0.3)
                await committed(ledger, "slow")
                assert set(checkpoints(engine)) == {"slow"}  # on record while it runs
                acc.delivered(Usage(PROMPT, 12))
            await asyncio.sleep(0.2)
            await committed(ledger, "end")
            assert checkpoints(engine) == {}  # "quick" was never written, "slow" is gone

    asyncio.run(scenario())
    rows = usage_rows(engine)
    assert (rows["quick"].output_token_count, rows["slow"].output_token_count) == (9, 12)
