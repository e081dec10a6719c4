"""Metering at scale on PostgreSQL (issue 6, acceptance 4).

    .venv/bin/python -m bench.metering_scale [--rows 1000000] [--ledger-rows 50000] [--json]

In a fresh PostgreSQL database (127.0.0.1:5432, dropped afterwards), migrated as the control
plane leaves it:
1. `--rows` `endpoint_usage` rows (50 endpoints × 2 served entities, 24 hours, random token
   counts), loaded with COPY; then `billing.metering.run_metering` aggregates them into hourly
   TOKEN records (one GROUP BY in the database). Reported: rows, seconds, rows/s.
   Goal: <= 30 s for 1,000,000 rows.
2. Ledger write throughput: `--ledger-rows` concurrent `UsageLedger.record()` calls (group
   commit). Reported: rows/s. Goal: >= 5,000 rows/s.
The baseline of (1) is a bare `SELECT count(*)` scan of the same rows, measured in the same run:
aggregation cannot be faster than reading the rows once.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text

from bench.scratch_db import migrated_engine, scratch_postgres
from billing.ledger import UsageLedger, UsageRow
from billing.metering import MeteringContext, run_metering
from billing.ratecard import load_rate_cards

START = datetime(2026, 11, 26, 0, 0, tzinfo=UTC)
COLUMNS = (
    "databricks_request_id, requester, status_code, request_time, served_entity_id, "
    "entity_name, entity_version, model_family, workload_type, "
    "endpoint_name, endpoint_id, workspace_id, account_id, input_token_count, "
    "output_token_count, request_streaming"
)


@contextmanager
def fresh_database() -> Iterator[Engine]:
    """A new PostgreSQL database migrated to head, dropped afterwards."""
    with scratch_postgres("moeserve_bench") as url, migrated_engine(url) as engine:
        yield engine


def context() -> MeteringContext:
    return MeteringContext(
        cloud="aws", region="us-east-1", tier="PREMIUM", rate_cards=load_rate_cards()
    )


def load_usage(engine: Engine, rows: int, *, seed: int = 0) -> tuple[int, int]:
    """COPY `rows` generated usage rows spread over 24 hours from START; returns the sums of
    (input, output) tokens."""
    rng = random.Random(seed)
    sum_in = sum_out = 0
    raw = engine.raw_connection()
    try:
        cursor: Any = raw.cursor()
        with cursor.copy(f"COPY endpoint_usage ({COLUMNS}) FROM STDIN") as copy:
            for offset in range(0, rows, 100_000):
                buffer = io.StringIO()
                for i in range(offset, min(rows, offset + 100_000)):
                    tokens_in, tokens_out = rng.randrange(4000), rng.randrange(1000)
                    sum_in += tokens_in
                    sum_out += tokens_out
                    endpoint = i % 50
                    moment = START + timedelta(microseconds=rng.randrange(86_400_000_000))
                    buffer.write(
                        f"req-{i}\tuser@example.com\t200\t{moment.isoformat()}\t"
                        f"dbrx-tiny-{i // 50 % 2}\tdbrx-tiny\t1\tdbrx\tCPU\t"
                        f"ep{endpoint}\tep-{endpoint}\tws-{endpoint % 5}\t"
                        f"acct-1\t{tokens_in}\t{tokens_out}\tf\n"
                    )
                copy.write(buffer.getvalue())
        raw.commit()
    finally:
        raw.close()
    return sum_in, sum_out


def time_metering(engine: Engine, rows: int) -> dict[str, Any]:
    with engine.connect() as connection:
        connection.execute(text("ANALYZE endpoint_usage"))
        connection.commit()
        began = time.perf_counter()
        connection.execute(text("SELECT count(*) FROM endpoint_usage")).scalar_one()
        scan_s = time.perf_counter() - began
    began = time.perf_counter()
    report = run_metering(engine, context(), START + timedelta(days=1, hours=1))
    seconds = time.perf_counter() - began
    return {
        "rows": rows,
        "records": report.written,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds),
        "baseline_count_scan_s": round(scan_s, 3),
        "ratio_to_scan": round(seconds / scan_s, 1) if scan_s else None,
    }


async def _ledger_rows_per_s(engine: Engine, count: int) -> dict[str, Any]:
    now = datetime.now(UTC)
    rows = [
        UsageRow(
            databricks_request_id=f"ledger-{i}",
            requester="user@example.com",
            status_code=200,
            request_time=now,
            served_entity_id="dbrx-tiny-1",
            entity_name="dbrx-tiny",
            entity_version="1",
            model_family="dbrx",
            workload_type="CPU",
            endpoint_name="chat",
            endpoint_id="ep-ledger",
            account_id="acct-1",
            workspace_id="ws-1",
            input_token_count=100,
            output_token_count=20,
            request_streaming=False,
        )
        for i in range(count)
    ]
    async with UsageLedger(engine, max_batch=1000) as ledger:
        began = time.perf_counter()
        await asyncio.gather(*(ledger.record(row) for row in rows))
        seconds = time.perf_counter() - began
        batches = ledger.batches_committed
    return {
        "rows": count,
        "seconds": round(seconds, 3),
        "rows_per_s": round(count / seconds),
        "batches": batches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--ledger-rows", type=int, default=50_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with fresh_database() as engine:
        began = time.perf_counter()
        load_usage(engine, args.rows)
        load_s = time.perf_counter() - began
        metering = time_metering(engine, args.rows)
        metering["load_s"] = round(load_s, 3)
        ledger = asyncio.run(_ledger_rows_per_s(engine, args.ledger_rows))
    result = {"metering": metering, "ledger": ledger}
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"metering: {metering['rows']:,} usage rows -> {metering['records']} hourly records in "
        f"{metering['seconds']} s ({metering['rows_per_s']:,} rows/s; goal <= 30 s); "
        f"count(*) scan {metering['baseline_count_scan_s']} s, "
        f"ratio {metering['ratio_to_scan']}x; COPY load {metering['load_s']} s"
    )
    print(
        f"ledger: {ledger['rows']:,} concurrent records in {ledger['seconds']} s = "
        f"{ledger['rows_per_s']:,} rows/s in {ledger['batches']} batches (goal >= 5,000 rows/s)"
    )


if __name__ == "__main__":
    main()
