"""Metering on SQLite and on a fresh PostgreSQL database: exact token DBUs per hour,
corrections of closed hours by RETRACTION + RESTATEMENT, idempotent and restartable runs,
live records of the open hour, provisioned throughput from the capacity timeline (traffic
ignored, hour splits, parking, LAUNCH records)."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine

import billing.metering.job as metering_job
from billing.metering import LIVE_PREFIX, UsageFilters, live_records, run_metering
from tests.billing.test_metering_helpers import (
    CAPACITY,
    DBRX_IN,
    DBRX_OUT,
    DBRX_TINY_CHUNK_HOUR,
    DBRX_TINY_LAUNCH,
    USAGE,
    at,
    context,
    delete_records,
    insert,
    interval,
    migrated_engine,
    records,
    total,
    usage_row,
)

CTX = context()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Engine]:
    yield from migrated_engine(request.param, tmp_path)


def expected_dbu(rows: list[dict[str, Any]]) -> Decimal:
    return sum(
        (
            (row["input_token_count"] * DBRX_IN + row["output_token_count"] * DBRX_OUT) / 1_000_000
            for row in rows
        ),
        Decimal(0),
    )


def random_rows(count: int, seed: int, prefix: str = "r") -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        usage_row(
            f"{prefix}{i}",
            at(9) + timedelta(seconds=rng.randrange(3 * 3600), microseconds=rng.randrange(10**6)),
            rng.choice([0, rng.randrange(1, 5000)]),
            rng.choice([0, rng.randrange(1, 2000)]),
            status_code=rng.choice([200, 200, 200, 429, 500]),
            endpoint_id=rng.choice(["ep-a", "ep-b"]),
            workspace_id=rng.choice(["ws-1", "ws-2"]),
        )
        for i in range(count)
    ]


def snapshot(engine: Engine) -> list[tuple[Any, ...]]:
    return [
        (r["record_id"], r["record_type"], r["usage_quantity"], r["input_tokens"], r["corrects"])
        for r in records(engine)
    ]


def test_token_records_sum_exactly_to_the_rates_per_hour(engine: Engine) -> None:
    rows = random_rows(400, seed=1)
    insert(engine, USAGE, rows)
    report = run_metering(engine, CTX, at(12, 30))
    stored = records(engine, usage_type="TOKEN")
    assert report.originals == len(stored) > 0
    assert total(stored) == expected_dbu(rows)
    by_hour: dict[tuple[str, Any], int] = defaultdict(int)
    for row in rows:
        hour = row["request_time"].replace(minute=0, second=0, microsecond=0)
        by_hour[(row["endpoint_id"], hour)] += row["input_token_count"]
    for key, tokens in by_hour.items():
        matching = [r for r in stored if (r["endpoint_id"], r["usage_start_time"]) == key]
        assert sum(r["input_tokens"] for r in matching) == tokens
    record = stored[0]
    assert record["sku_name"] == "PREMIUM_SERVERLESS_REAL_TIME_INFERENCE_US_EAST_1"
    assert record["product_features"] == {"serving_type": "FOUNDATION_MODEL"}
    assert record["record_type"] == "ORIGINAL"
    assert record["usage_end_time"] - record["usage_start_time"] == timedelta(hours=1)


def test_worked_example_is_exact(engine: Engine) -> None:
    insert(engine, USAGE, [usage_row("one", at(10, 5), 20, 16)])
    run_metering(engine, CTX, at(11, 30))
    [record] = records(engine)
    assert record["usage_quantity"] == Decimal("0.000728568")


def test_running_twice_changes_nothing(engine: Engine) -> None:
    insert(engine, USAGE, random_rows(100, seed=2))
    first = run_metering(engine, CTX, at(12, 30))
    before = snapshot(engine)
    second = run_metering(engine, CTX, at(12, 30))
    assert first.written > 0 and second.written == 0
    assert snapshot(engine) == before


def test_late_rows_for_a_closed_hour_restate_it_exactly(engine: Engine) -> None:
    rows = [usage_row("a", at(9, 10), 100, 50), usage_row("b", at(10, 10), 7, 3)]
    insert(engine, USAGE, rows)
    run_metering(engine, CTX, at(11, 30))
    [original] = records(engine, usage_start_time=at(9))
    late = [usage_row("late", at(9, 59, 59), 1000, 1)]
    insert(engine, USAGE, late)
    report = run_metering(engine, CTX, at(11, 40))
    assert (report.originals, report.retractions, report.restatements) == (0, 1, 1)
    nine = records(engine, usage_start_time=at(9))
    [retraction] = [r for r in nine if r["record_type"] == "RETRACTION"]
    [restatement] = [r for r in nine if r["record_type"] == "RESTATEMENT"]
    assert retraction["corrects"] == original["record_id"]
    assert retraction["usage_quantity"] == -original["usage_quantity"]
    assert restatement["usage_quantity"] == expected_dbu([rows[0], *late])
    assert total(nine) == expected_dbu([rows[0], *late])
    assert total(records(engine)) == expected_dbu(rows + late)
    assert run_metering(engine, CTX, at(11, 50)).written == 0
    # A second correction retracts the restatement, not the original.
    insert(engine, USAGE, [usage_row("later", at(9, 1), 5, 5)])
    run_metering(engine, CTX, at(12, 0))
    [second] = [
        r
        for r in records(engine, usage_start_time=at(9), record_type="RETRACTION")
        if r["corrects"] != original["record_id"]
    ]
    assert second["corrects"] == restatement["record_id"]


def test_a_run_killed_midway_writes_nothing_and_its_rerun_matches_a_clean_run(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert(engine, USAGE, random_rows(200, seed=3))
    insert(engine, CAPACITY, [interval(at(9, 15), at(11, 5))])
    real_write = metering_job._write

    def killed(connection: Any, planned: list[dict[str, Any]]) -> None:
        real_write(connection, planned[: len(planned) // 2])
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(metering_job, "_write", killed)
    with pytest.raises(KeyboardInterrupt):
        run_metering(engine, CTX, at(12, 30))
    assert records(engine) == []
    monkeypatch.setattr(metering_job, "_write", real_write)
    run_metering(engine, CTX, at(12, 30))
    rerun = snapshot(engine)
    delete_records(engine)
    run_metering(engine, CTX, at(12, 30))
    assert snapshot(engine) == rerun


def test_partial_progress_then_rerun_equals_one_clean_run(engine: Engine) -> None:
    rows = random_rows(150, seed=4)
    insert(engine, USAGE, rows)
    run_metering(engine, CTX, at(10, 15))  # closes only hour 9
    run_metering(engine, CTX, at(12, 30))
    stepwise = snapshot(engine)
    delete_records(engine)
    run_metering(engine, CTX, at(12, 30))
    assert snapshot(engine) == stepwise
    assert total(records(engine)) == expected_dbu(rows)


def test_the_open_hour_is_live_and_stored_plus_live_is_always_the_total(engine: Engine) -> None:
    rows = [usage_row("closed", at(10, 30), 10, 10), usage_row("open", at(11, 20), 20, 16)]
    insert(engine, USAGE, rows)
    now = at(11, 21)
    run_metering(engine, CTX, now)
    assert [r["usage_start_time"] for r in records(engine)] == [at(10)]
    live = live_records(engine, CTX, now)
    assert [(r.usage_start_time, r.record_type) for r in live] == [(at(11), "ORIGINAL")]
    assert live[0].record_id.startswith(LIVE_PREFIX)
    assert live[0].usage_quantity == Decimal("0.000728568")
    # Late usage for the stored hour shows up live as a correction before the job runs.
    insert(engine, USAGE, [usage_row("late", at(10, 59), 1, 1)])
    live = live_records(engine, CTX, at(11, 22))
    assert sorted(r.record_type for r in live) == ["ORIGINAL", "RESTATEMENT", "RETRACTION"]
    stored = total(records(engine))
    assert stored + sum(r.usage_quantity for r in live) == expected_dbu(
        [*rows, usage_row("late", at(10, 59), 1, 1)]
    )
    filtered = live_records(engine, CTX, at(11, 22), UsageFilters(start_time=at(11)))
    assert [r.usage_start_time for r in filtered] == [at(11)]
    assert live_records(engine, CTX, at(11, 22), UsageFilters(workspace_ids={"ws-9"})) == []


def test_provisioned_throughput_bills_chunks_held_whatever_the_traffic(engine: Engine) -> None:
    insert(engine, CAPACITY, [interval(at(10, 20), at(10, 21, 30))])
    insert(
        engine,
        USAGE,
        [
            usage_row(f"q{i}", at(10, 21), 500, 500, endpoint_id="ep-pt", endpoint_name="pt")
            for i in range(20)
        ],
    )
    run_metering(engine, CTX, at(12))
    [record] = records(engine)
    assert record["usage_type"] == "COMPUTE_TIME"
    assert record["usage_quantity"] == 2 * DBRX_TINY_CHUNK_HOUR * 90 / 3600
    assert record["chunk_seconds"] == 180
    assert records(engine, usage_type="TOKEN") == []


def test_provisioned_interval_crossing_an_hour_is_split(engine: Engine) -> None:
    insert(engine, CAPACITY, [interval(at(10, 59, 30), at(11, 1))])
    run_metering(engine, CTX, at(12, 30))
    stored = records(engine)
    by_hour = {r["usage_start_time"]: r["usage_quantity"] for r in stored}
    assert by_hour == {
        at(10): 2 * DBRX_TINY_CHUNK_HOUR * 30 / 3600,
        at(11): 2 * DBRX_TINY_CHUNK_HOUR * 60 / 3600,
    }


def test_parked_time_accrues_nothing_and_a_wake_adds_one_launch(engine: Engine) -> None:
    insert(
        engine,
        CAPACITY,
        [
            interval(at(10), at(10, 10), scale_to_zero_enabled=True),
            interval(at(10, 10), at(10, 40), scale_to_zero_enabled=True, parked=True),
            interval(at(10, 40), None, scale_to_zero_enabled=True, woke_from_zero=True),
        ],
    )
    run_metering(engine, CTX, at(12, 30))  # stores hours 10 and 11
    compute = records(engine, sku_name="PREMIUM_SERVERLESS_REAL_TIME_INFERENCE_US_EAST_1")
    assert total(compute) == 2 * DBRX_TINY_CHUNK_HOUR * (600 + 4800) / 3600
    [launch] = records(engine, sku_name="PREMIUM_SERVERLESS_REAL_TIME_INFERENCE_LAUNCH_US_EAST_1")
    assert (launch["usage_start_time"], launch["launches"]) == (at(10), 1)
    assert launch["usage_quantity"] == DBRX_TINY_LAUNCH
    # The open interval counts up to now in the live records.
    live = live_records(engine, CTX, at(12, 30))
    assert [r.chunk_seconds for r in live] == [2 * 1800]
