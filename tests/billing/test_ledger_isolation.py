"""One row can never cost another its place: a group-commit batch that holds rows the
database refuses (NUL in a text column on PostgreSQL, a lone surrogate no UTF-8 encoder
takes) commits every other row, and only the refused rows' callers get `LedgerWriteError`.
A database that cannot be reached fails the batch at once, without splitting it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine

from bench.scratch_db import migrated_engine, scratch_postgres
from billing.ledger import InferencePayload, LedgerWriteError, UsageLedger, UsageRow
from tests.billing.test_ledger import inference_rows, usage, usage_rows

VICTIMS = 120
SECRET = "victim-secret-context"  # a victim's value that must never reach a log line


@pytest.fixture
def pg_engine() -> Iterator[Engine]:
    with scratch_postgres("moeserve_test") as url, migrated_engine(url) as engine:
        yield engine


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Engine]:
    if request.param == "sqlite":
        with migrated_engine(f"sqlite:///{tmp_path / 'ledger.db'}") as engine:
            yield engine
        return
    with scratch_postgres("moeserve_test") as url, migrated_engine(url) as engine:
        yield engine


def _victim(i: int) -> UsageRow:
    return usage(
        f"victim-{i:03}",
        client_request_id=f"victim-{i:03}",
        workspace_id=f"ws-tenant-{i % 7}",
        usage_context={"k": SECRET},
    )


async def _record_interleaved(
    ledger: UsageLedger, poison: dict[int, UsageRow]
) -> tuple[list[BaseException | None], list[BaseException | None]]:
    """Every victim and poison row recorded at once (so they share batches), poison rows
    placed among the victims; their outcomes, victims' then poison rows'."""
    calls: list[tuple[str, Any]] = []
    for i in range(VICTIMS):
        if i in poison:
            calls.append(("poison", ledger.record(poison[i])))
        calls.append(("victim", ledger.record(_victim(i), InferencePayload(f'{{"i": {i}}}'))))
    outcomes = await asyncio.gather(*(call for _, call in calls), return_exceptions=True)
    victims = [o for (kind, _), o in zip(calls, outcomes, strict=True) if kind == "victim"]
    poisoned = [o for (kind, _), o in zip(calls, outcomes, strict=True) if kind == "poison"]
    return victims, poisoned


def test_a_poison_row_fails_alone_and_every_victim_of_its_batch_is_committed_on_postgresql(
    pg_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    # PostgreSQL text cannot hold NUL; UTF-8 cannot encode a lone surrogate. Both reach the
    # driver inside a batch full of other tenants' rows.
    poison = {
        5: usage("poison-nul-client", client_request_id="bad\x00id"),
        40: usage("poison-nul-requester", requester="mallory\x00@example.com"),
        77: usage("poison-surrogate", client_request_id="bad\ud800id"),
        119: usage("poison-nul-client-2", client_request_id="\x00"),
    }

    async def scenario() -> tuple[UsageLedger, list[Any], list[Any]]:
        async with UsageLedger(pg_engine, max_batch=1000) as ledger:
            victims, poisoned = await _record_interleaved(ledger, poison)
            await ledger.record(usage("after"))  # the writer goes on
        return ledger, victims, poisoned

    with caplog.at_level(logging.WARNING, logger="billing.ledger.writer"):
        ledger, victims, poisoned = asyncio.run(scenario())

    assert [o for o in victims if o is not None] == []  # every victim's caller returned
    assert all(isinstance(o, LedgerWriteError) for o in poisoned), poisoned
    stored = {row.databricks_request_id: row for row in usage_rows(pg_engine)}
    assert sorted(stored) == sorted([f"victim-{i:03}" for i in range(VICTIMS)] + ["after"])
    assert stored["victim-042"]._asdict() == _victim(42).as_params()
    assert len(inference_rows(pg_engine)) == VICTIMS  # each victim's payload went with it
    assert ledger.rows_failed == len(poison)
    assert ledger.rows_committed == VICTIMS + 1
    assert ledger.batches_failed >= 1
    # The log says what happened, with counts and error types only: no tenant's values.
    lines = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert lines
    for line in lines:
        for value in ("mallory", "bad", SECRET, "victim-", "ws-tenant", "alice@example.com"):
            assert value not in line, line


def test_rows_the_driver_cannot_encode_fail_alone_on_either_database(engine: Engine) -> None:
    poison = {
        0: usage("poison-first", requester="\udfff"),
        60: usage("poison-mid", entity_version="1\ud800"),
    }

    async def scenario() -> tuple[list[Any], list[Any]]:
        async with UsageLedger(engine, max_batch=1000) as ledger:
            return await _record_interleaved(ledger, poison)

    victims, poisoned = asyncio.run(scenario())
    assert [o for o in victims if o is not None] == []
    assert all(isinstance(o, LedgerWriteError) for o in poisoned), poisoned
    for outcome in poisoned:  # the cause names the failure, never the value
        assert "\ud800" not in str(outcome.__cause__) and "\udfff" not in str(outcome.__cause__)
    assert len(usage_rows(engine)) == VICTIMS


def test_a_repeated_request_id_still_keeps_its_first_storable_row(pg_engine: Engine) -> None:
    async def scenario() -> list[Any]:
        async with UsageLedger(pg_engine, max_batch=100) as ledger:
            outcomes = await asyncio.gather(
                ledger.record(usage("req-0")),
                ledger.record(usage("req-1", client_request_id="x\x00")),  # first, refused
                ledger.record(usage("req-1", output_token_count=5)),  # stored in its place
                ledger.record(usage("req-1", output_token_count=6)),  # a repeat: no-op
                return_exceptions=True,
            )
            return list(outcomes)

    outcomes = asyncio.run(scenario())
    assert [type(o).__name__ for o in outcomes] == [
        "NoneType",
        "LedgerWriteError",
        "NoneType",
        "NoneType",
    ]
    rows = usage_rows(pg_engine)
    assert [(r.databricks_request_id, r.output_token_count) for r in rows] == [
        ("req-0", 29),
        ("req-1", 5),
    ]


def test_an_unreachable_database_fails_the_batch_at_once_without_splitting_it() -> None:
    # Nothing listens on port 1: every write would fail the same way, so the writer must not
    # try the rows apart (one connection attempt per part). No reconnect wait: the bounded
    # wait through a restart is tests/reliability/test_postgres_restart.py's.
    engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")

    async def scenario() -> tuple[UsageLedger, list[Any]]:
        async with UsageLedger(engine, max_batch=100, reconnect_timeout_s=0) as ledger:
            outcomes = await asyncio.gather(
                *(ledger.record(usage(f"req-{i}")) for i in range(20)), return_exceptions=True
            )
        return ledger, outcomes

    try:
        ledger, outcomes = asyncio.run(scenario())
    finally:
        engine.dispose()
    assert all(isinstance(o, LedgerWriteError) for o in outcomes)
    assert (ledger.rows_failed, ledger.rows_committed) == (20, 0)
    assert ledger.isolation_transactions == 0
