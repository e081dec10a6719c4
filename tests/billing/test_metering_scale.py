"""Metering at scale on PostgreSQL: a million usage rows aggregated into hourly records whose
DBUs are exact. Timing is printed, not asserted (`python -m bench.metering_scale` reports it)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from bench.metering_scale import fresh_database, load_usage, time_metering
from tests.billing.test_metering_helpers import DBRX_IN, DBRX_OUT, records, total


@pytest.mark.slow
def test_a_million_usage_rows_aggregate_exactly_on_postgresql() -> None:
    rows = 1_000_000
    with fresh_database() as engine:
        sum_in, sum_out = load_usage(engine, rows)
        figures = time_metering(engine, rows)
        print(f"\nmetering {rows:,} rows on PostgreSQL: {figures}")
        stored = records(engine)
        assert len(stored) == figures["records"] == 50 * 2 * 24
        assert total(stored) == (sum_in * DBRX_IN + sum_out * DBRX_OUT) / Decimal(1_000_000)
        assert sum(r["input_tokens"] for r in stored) == sum_in
