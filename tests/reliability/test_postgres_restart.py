"""PostgreSQL restarted mid-load (issue 14's fault suite): requests fail fast or are
retried, and no acknowledged usage is lost.

A real `moeserve run` child with its own local Ray serves the `databricks-dbrx-tiny`
shared endpoint on the real engine, its database a PRIVATE PostgreSQL cluster this test
starts (`private_postgres`), never the machine's shared server. Closed-loop clients send
chat completions back to back, streaming and not, each with its own `client_request_id`,
and count the tokens they receive; mid-load the cluster is stopped (`pg_ctl stop -m fast`:
every session terminated), left down for `OUTAGE_S` (longer than the query path's 2 s
lookup cache, so queries arriving then need the database), and started again on the same
port, while the load goes on and new queries keep arriving, through one keep-alive
connection pool, as an SDK client's would.

Required: every query is acknowledged (200 with its answer, or a stream ending in
`[DONE]`) or fails cleanly (a 5xx, or a stream's error event) within `FAIL_FAST_S`: none
hangs and none loses its connection without an answer; the streams mid-answer when the
database went (the stop waits for one) are retried, not failed: the usage ledger waits out
a restart that lasts seconds (before, their final rows failed at once and each ended with
an error event); every acknowledged query has exactly one usage row (status 200) with the tokens
the client was told it used and counted; no query has two; and after the restart the
server answers again, and bills what it answers. The second test holds the ledger to its
bound: a restart shorter than `reconnect_timeout_s` costs no row, a longer outage fails
the rows after it, not before.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import pytest

from bench.scratch_db import migrated_engine
from billing.ledger import LedgerWriteError, UsageLedger, UsageRow
from tests.control_plane.moeserve_process import free_port, moeserve_run
from tests.reliability.private_postgres import PrivatePostgres, private_postgres, server_binaries
from tests.reliability.query_load import ACKNOWLEDGED, DROPPED, Outcome, query

TOKEN = "dapi-postgres-restart-token"
CLIENTS = 4  # closed loop: each sends its next query when the last one ended
ARRIVAL_EVERY_S = 0.25  # open loop, around the outage: a new query this often
MAX_TOKENS = 32
ACKED_BEFORE_OUTAGE = 12  # the load is well under way when the database goes
OUTAGE_S = 4.0  # the database is down this long: past the 2 s lookup cache
LOAD_AFTER_RESTART_S = 5.0
FAIL_FAST_S = 30.0  # a query that fails, fails within this
CLIENT_TIMEOUT_S = 2 * FAIL_FAST_S  # so that a hang shows as one, not as a client timeout
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    bin_dir = server_binaries()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin) or no postgres user")
    with private_postgres(bin_dir, free_port()) as cluster:
        yield cluster


def _closed_loop(url: str, client: int, outcomes: list[Outcome], stop: threading.Event) -> None:
    with httpx.Client(timeout=CLIENT_TIMEOUT_S, headers=HEADERS) as http:
        n = 0
        while not stop.is_set():
            outcome = Outcome(f"pgrestart-{client}-{n:04}", n % 2 == client % 2, time.monotonic())
            outcomes.append(outcome)
            query(http, url, outcome, MAX_TOKENS)
            n += 1


def _open_loop(url: str, outcomes: list[Outcome], stop: threading.Event) -> None:
    """A new query every `ARRIVAL_EVERY_S`, each on a thread of its own, all through one
    connection pool (keep-alive), whatever the earlier ones are doing."""
    threads = []
    with httpx.Client(timeout=CLIENT_TIMEOUT_S, headers=HEADERS) as http:
        n = 0
        while not stop.wait(ARRIVAL_EVERY_S):
            outcome = Outcome(f"pgrestart-arrival-{n:04}", n % 2 == 0, time.monotonic())
            outcomes.append(outcome)
            thread = threading.Thread(target=query, args=(http, url, outcome, MAX_TOKENS))
            thread.start()
            threads.append(thread)
            n += 1
        for thread in threads:
            thread.join(CLIENT_TIMEOUT_S + 5)


def _rows(dsn: str) -> list[tuple[str, int, int, int]]:
    with psycopg.connect(dsn) as db:
        return db.execute(
            "SELECT client_request_id, status_code, input_token_count, output_token_count "
            "FROM endpoint_usage WHERE client_request_id LIKE 'pgrestart-%'"
        ).fetchall()


def _open_checkpoints(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as db:
        rows = db.execute("SELECT client_request_id FROM usage_checkpoints").fetchall()
    return {row[0] for row in rows}


@pytest.mark.timeout(300)
def test_a_postgres_restart_mid_load_fails_queries_fast_and_loses_no_acknowledged_usage(
    tmp_path: Path, postgres: PrivatePostgres
) -> None:
    env = {
        "MOESERVE_ADMIN_TOKEN": TOKEN,
        "MOESERVE_DATABASE_URL": postgres.url,
        "MOESERVE_WORKERS__ENGINE__KV_CACHE_TOKENS": "4096",
        "MOESERVE_RECONCILE_INTERVAL_S": "0.5",
        "MOESERVE_RAY_NUM_CPUS": "4",
        "MOESERVE_SHARED_ENDPOINTS": json.dumps(
            [{"name": "databricks-dbrx-tiny", "entity_name": "dbrx-tiny"}]
        ),
    }
    with moeserve_run(
        tmp_path,
        free_port(),
        env,
        ready_line=r"^Ctrl-C stops moeserve",
        own_ray=True,
        ready_timeout_s=150,
    ) as server:
        url = f"{server.url}/serving-endpoints/databricks-dbrx-tiny/invocations"
        outcomes: list[Outcome] = []
        stop, stop_arrivals = threading.Event(), threading.Event()
        threads = [
            threading.Thread(target=_closed_loop, args=(url, c, outcomes, stop))
            for c in range(CLIENTS)
        ]
        arrivals = threading.Thread(target=_open_loop, args=(url, outcomes, stop_arrivals))
        for thread in threads:
            thread.start()
        try:
            deadline = time.monotonic() + 60
            while sum(o.acknowledged for o in outcomes) < ACKED_BEFORE_OUTAGE:
                assert time.monotonic() < deadline, server.tail()
                time.sleep(0.05)
            arrivals.start()
            time.sleep(0.5)
            # -- the database goes away mid-load (a stream mid-answer), comes back ------
            while not any(o.first_token_at and not o.ended for o in list(outcomes)):
                assert time.monotonic() < deadline + 30, "no stream is ever mid-answer"
                time.sleep(0.005)
            went_down = time.monotonic()
            postgres.stop("fast")
            time.sleep(OUTAGE_S)
            postgres.start()
            came_back = time.monotonic()
            time.sleep(1)
            stop_arrivals.set()
            time.sleep(LOAD_AFTER_RESTART_S)
        finally:
            stop.set()
            stop_arrivals.set()
            for thread in [*threads, arrivals]:
                if thread.ident is not None:
                    thread.join(timeout=CLIENT_TIMEOUT_S + 10)
        assert not any(thread.is_alive() for thread in threads), "a client hangs"

        # -- it keeps answering, and bills what it answers ------------------------------
        final = Outcome("pgrestart-final", False, time.monotonic())
        with httpx.Client(timeout=CLIENT_TIMEOUT_S, headers=HEADERS) as http:
            query(http, url, final, MAX_TOKENS)
        assert final.acknowledged, (final.status, final.error, server.tail())
        outcomes.append(final)
        rows = _rows(postgres.dsn)  # the final row was committed before its 200
        left_open = _open_checkpoints(postgres.dsn)

    acked = [o for o in outcomes if o.acknowledged]
    failed = [o for o in outcomes if not o.acknowledged]
    doubled = {c: n for c, n in Counter(r[0] for r in rows).items() if n > 1}
    billed = {r[0]: r for r in rows}
    # Streams mid-answer when the database went: past every read of the query path.
    in_flight = [o for o in outcomes if o.first_token_at and o.first_token_at < went_down < o.ended]
    during = [o for o in outcomes if went_down <= o.started < came_back]
    unbilled = [
        o
        for o in failed
        if o.counted_tokens and o.client_request_id not in billed.keys() | left_open
    ]
    print(
        f"\nPostgreSQL down {OUTAGE_S:.0f} s mid-load: {len(outcomes)} queries "
        f"({sum(o.streaming for o in outcomes)} streaming; {len(in_flight)} streams mid-answer "
        f"when it went, {len(during)} sent while it was down): {len(acked)} acknowledged, "
        f"{len(failed)} failed {dict(Counter(o.kind for o in failed))} (slowest "
        f"{max((o.seconds for o in failed), default=0):.1f} s), slowest acknowledged "
        f"{max(o.seconds for o in acked):.1f} s; {len(rows)} usage rows, {len(doubled)} "
        f"doubled, {sum(o.client_request_id in billed for o in failed)} failed queries billed, "
        f"{len(left_open)} left open (settled later), {len(unbilled)} streams delivered "
        "tokens never on record"
    )
    for o in failed:
        print(f"  failed {o.client_request_id} stream={o.streaming} {o.seconds:.2f}s {o.error}")

    # Nothing hangs, nothing is dropped: a query that fails, fails fast and cleanly.
    for o in failed:
        assert o.kind != DROPPED, f"{o.client_request_id}: no answer ({o.error})"
        assert o.seconds < FAIL_FAST_S, (o.client_request_id, o.seconds, o.error)
        # An HTTP refusal says "come back": 503 with Retry-After, not a 500.
        assert o.status in (None, 200, 503), (o.client_request_id, o.status, o.error)
    # The streams mid-answer when the database went waited for it: none failed.
    assert in_flight and all(o.kind == ACKNOWLEDGED for o in in_flight), [
        (o.client_request_id, o.kind, o.error) for o in in_flight if not o.acknowledged
    ]
    # Every acknowledged query: exactly one row, status 200, the tokens the client saw.
    assert doubled == {}
    for o in acked:
        assert o.counted_tokens == o.completion_tokens > 0, o
        row = billed.get(o.client_request_id)
        assert row is not None, f"acknowledged {o.client_request_id} has no usage row"
        assert row[1:] == (200, o.prompt_tokens, o.completion_tokens), (o, row)
    assert sum(o.started > came_back for o in acked) >= CLIENTS  # the load went on after


def _usage(request_id: str) -> UsageRow:
    return UsageRow(
        databricks_request_id=request_id,
        client_request_id=request_id,
        requester="alice@example.com",
        status_code=200,
        request_time=datetime.now(UTC),
        served_entity_id="dbrx-tiny-1",
        entity_name="dbrx-tiny",
        entity_version="1",
        model_family="dbrx",
        workload_type="CPU",
        endpoint_name="chat",
        endpoint_id="ep0123456789",
        workspace_id="ws0123456789",
        account_id="acct0123456789",
        input_token_count=11,
        output_token_count=29,
        request_streaming=False,
    )


@pytest.mark.timeout(120)
def test_the_usage_ledger_waits_out_a_restart_and_gives_up_after_its_bound(
    postgres: PrivatePostgres,
) -> None:
    async def restart_in(seconds: float) -> None:
        await asyncio.sleep(seconds)
        await asyncio.to_thread(postgres.start)

    async def scenario() -> tuple[float, float]:
        async with UsageLedger(engine, reconnect_timeout_s=OUTAGE_S + 4) as ledger:
            await ledger.record(_usage("before"))  # the writer holds its connection
            postgres.stop("fast")
            restart = asyncio.create_task(restart_in(OUTAGE_S))
            started = time.monotonic()
            await ledger.record(_usage("during"))  # waits for the database
            waited = time.monotonic() - started
            await restart
        async with UsageLedger(engine, reconnect_timeout_s=1.0) as ledger:
            await ledger.record(_usage("after"))
            postgres.stop("fast")
            started = time.monotonic()
            with pytest.raises(LedgerWriteError):
                await ledger.record(_usage("lost"))
            gave_up = time.monotonic() - started
            postgres.start()
        return waited, gave_up

    with migrated_engine(postgres.url) as engine:
        waited, gave_up = asyncio.run(scenario())
    stored = {r[0] for r in _rows_of(postgres.dsn)}
    print(
        f"\nledger: waited {waited:.1f} s out a {OUTAGE_S:.0f} s outage, "
        f"gave up after {gave_up:.1f} s on a longer one"
    )
    assert stored == {"before", "during", "after"}
    assert OUTAGE_S - 0.5 < waited < OUTAGE_S + 3
    assert 1.0 <= gave_up < 3.0


def _rows_of(dsn: str) -> list[tuple[str]]:
    with psycopg.connect(dsn) as db:
        return db.execute("SELECT databricks_request_id FROM endpoint_usage").fetchall()
