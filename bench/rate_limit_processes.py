"""Rate limits across control-plane processes: two processes share one PostgreSQL database
and one Redis; an endpoint limited to `--calls` calls per minute is hammered through both
for `--duration` seconds. Admission times are read back from the usage ledger (one row per
admitted call, stamped at admission) and every 60-second window is checked.

    .venv/bin/python -m bench.rate_limit_processes [--calls 60] [--duration 120] [--json]

Reported: admitted calls, 429s, the most calls admitted in any sliding 60 s window (the
limit's promise), and per aligned clock minute. Goal (issue 5): <= calls (+1%) per window.
Needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 (see docs/testing.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import datetime
from typing import Any

import httpx

from bench.control_plane_process import DEFAULT_TOKEN, create_endpoint, start_control_plane, stop
from bench.scratch_db import scratch_postgres

REDIS_URL = "redis://127.0.0.1:6379/0"
WINDOW_S = 60.0


async def hammer(bases: list[str], endpoint: str, duration_s: float, workers: int) -> Counter[int]:
    """`workers` clients per process, each calling back to back until the time is up."""
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + duration_s
    headers = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}
    body = {"prompt": "count me", "max_tokens": 1}

    async def client(base: str) -> None:
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
            while time.monotonic() < deadline:
                response = await http.post(f"/serving-endpoints/{endpoint}/invocations", json=body)
                statuses[response.status_code] += 1
                if response.status_code == 429:
                    assert response.headers["Retry-After"].isdigit()
                    await asyncio.sleep(0.05)  # hammer, but leave the CPU to the servers

    await asyncio.gather(*(client(base) for base in bases for _ in range(workers)))
    return statuses


def admission_times(database_url: str, endpoint: str) -> list[datetime]:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT request_time FROM endpoint_usage WHERE endpoint_name = :name "
                    "ORDER BY request_time"
                ),
                {"name": endpoint},
            )
            return [row[0] for row in rows]
    finally:
        engine.dispose()


def max_in_sliding_window(times: list[datetime], window_s: float = WINDOW_S) -> int:
    """The most admissions inside any half-open window [t, t + window_s)."""
    seconds = [t.timestamp() for t in times]
    best = start = 0
    for end, t in enumerate(seconds):
        while seconds[start] <= t - window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def run(calls: int, duration_s: float, workers: int) -> dict[str, Any]:
    """Measure on this process's Ray (started here, unless one is already running)."""
    import ray

    owns_ray = not ray.is_initialized()
    if owns_ray:
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    name = f"rl-{uuid.uuid4().hex[:6]}"
    try:
        with (
            scratch_postgres("moeserve_rl") as database_url,
            tempfile.TemporaryDirectory() as data_dir,
        ):
            processes = []
            try:
                for _ in range(2):
                    print("starting a control plane ...", file=sys.stderr)
                    processes.append(
                        start_control_plane(
                            address, data_dir, database_url=database_url, redis_url=REDIS_URL
                        )
                    )
                bases = [base for _, base in processes]
                limits = [{"calls": calls, "key": "endpoint", "renewal_period": "minute"}]
                create_endpoint(
                    bases[0], name, ai_gateway={"rate_limits": limits}, task="llm/v1/completions"
                )
                print(
                    f"hammering {name} through 2 processes for {duration_s:g} s ...",
                    file=sys.stderr,
                )
                statuses = asyncio.run(hammer(bases, name, duration_s, workers))
            finally:
                for process, _ in processes:
                    stop(process)
            times = admission_times(database_url, name)
    finally:
        if owns_ray:
            ray.shutdown()
    per_minute = Counter(t.replace(second=0, microsecond=0).isoformat() for t in times)
    return {
        "limit_calls_per_minute": calls,
        "duration_s": duration_s,
        "admitted": statuses[200],
        "rejected_429": statuses[429],
        "other_statuses": {str(k): v for k, v in statuses.items() if k not in (200, 429)},
        "usage_rows": len(times),
        "max_in_any_60s_window": max_in_sliding_window(times),
        "per_clock_minute": dict(sorted(per_minute.items())),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=60, help="the limit, calls per minute")
    parser.add_argument("--duration", type=float, default=120, help="seconds of hammering")
    parser.add_argument("--workers", type=int, default=4, help="clients per process")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.calls, args.duration, args.workers)
    ok = result["max_in_any_60s_window"] <= args.calls * 1.01
    for key, value in result.items():
        print(f"{key}: {value}")
    print(f"{'PASS' if ok else 'FAIL'}: at most {args.calls} (+1%) admitted in any 60 s window")
    if args.json:
        print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
