"""kill -9 under streaming load, then a restart on the same data dir (issue 14, finding 5,
and the fault suite's "kill -9 under streaming load").

A real `moeserve run` child with its own local Ray (as `make run` starts it) serving the
`databricks-dbrx-tiny` shared endpoint on the real engine, at its default settings. Ten
clients stream chat completions and count the tokens they receive (one logprobs entry per
token); once every stream is well under way, the control plane gets SIGKILL. Before the
fix, usage was written only when a request ended, so every stream in flight vanished from
billing. Now each is on record from admission and checkpointed while it streams; the
restarted process settles the dead one's open requests from their last checkpoint
(status 520). Required, per stream: billed >= received - one checkpoint interval
(`gateway.usage_checkpoint_tokens`, 16 by default), one row per request (none doubled),
and metering prices each row once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from bench.scratch_db import migrated_engine
from billing.metering import run_metering
from tests.billing.test_metering_helpers import DBRX_IN, DBRX_OUT, context, records, total
from tests.control_plane.moeserve_process import child_env, free_port, moeserve_run
from tests.reliability.processes import descendants, running

TOKEN = "dapi-kill9-billing-token"
STREAMS = 10
MAX_TOKENS = 400
RECEIVED_AT_KILL = 24  # every stream has received at least this many tokens when killed
CHECKPOINT_TOKENS = 16  # gateway.usage_checkpoint_tokens, at its default
SETTLED_WITHIN_S = 180  # the stale bound (60 s by default) plus a pass, after the restart
INTERRUPTED_STATUS = 520


@dataclass
class Stream:
    client_request_id: str
    tokens: int = 0  # completion tokens received
    done: bool = False
    error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def _stream(url: str, stream: Stream) -> None:
    body = {
        "messages": [{"role": "user", "content": "Tell me a long story about experts."}],
        "max_tokens": MAX_TOKENS,
        "stream": True,
        "logprobs": True,
        "client_request_id": stream.client_request_id,
    }
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with (
            httpx.Client(timeout=120) as http,
            http.stream("POST", url, json=body, headers=headers) as response,
        ):
            if response.status_code != 200:
                stream.error = f"{response.status_code}: {response.read()!r}"
                return
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    stream.done = True
                    continue
                for choice in json.loads(data).get("choices", []):
                    received = len((choice.get("logprobs") or {}).get("content") or [])
                    with stream.lock:
                        stream.tokens += received
    except httpx.HTTPError as exc:
        stream.error = repr(exc)


def _kill_all(pids: set[int]) -> set[int]:
    """SIGKILL `pids` (processes this test's children started) and whatever they started
    since they were listed; returns those still running 30 s later (none, normally)."""
    found = set(pids)
    for pid in list(found):
        if running(pid):
            found |= descendants(pid)
    for pid in found:
        if running(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while (left := {p for p in found if running(p)}) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _usage_rows(db: Path) -> list[tuple[str, str, int, int, int]]:
    with sqlite3.connect(db) as connection:
        return connection.execute(
            "SELECT client_request_id, databricks_request_id, status_code, input_token_count, "
            "output_token_count FROM endpoint_usage WHERE client_request_id LIKE 'kill9-%'"
        ).fetchall()


def _open_rows(db: Path) -> int:
    with sqlite3.connect(db) as connection:
        tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master")}
        if "usage_checkpoints" not in tables:
            return 0
        count: int = connection.execute("SELECT count(*) FROM usage_checkpoints").fetchone()[0]
        return count


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill9_mid_stream_bills_every_stream_up_to_its_last_checkpoint_once(
    tmp_path: Path,
) -> None:
    env = child_env(
        {
            "MOESERVE_ADMIN_TOKEN": TOKEN,
            "MOESERVE_WORKERS__ENGINE__KV_CACHE_TOKENS": "8192",
            "MOESERVE_RECONCILE_INTERVAL_S": "0.5",
            "MOESERVE_RAY_NUM_CPUS": "4",
            # The dead process's open rows are settled this long after its last refresh:
            # shorter than the 60 s default, so the test waits 20 s instead of a minute.
            "MOESERVE_GATEWAY__USAGE_CHECKPOINT_STALE_S": "20",
            "MOESERVE_SHARED_ENDPOINTS": json.dumps(
                [{"name": "databricks-dbrx-tiny", "entity_name": "dbrx-tiny"}]
            ),
        }
    )
    db = tmp_path / "moeserve.db"
    streams = [Stream(f"kill9-{i:02}") for i in range(STREAMS)]
    started: set[int] = set()  # every process our children started, to end them all
    try:
        # -- under load, kill -9 ----------------------------------------------------------
        with moeserve_run(
            tmp_path,
            free_port(),
            env,
            ready_line=r"^Ctrl-C stops moeserve",
            own_ray=True,
            ready_timeout_s=300,
        ) as server:
            started |= descendants(server.proc.pid)
            url = f"{server.url}/serving-endpoints/databricks-dbrx-tiny/invocations"
            threads = [threading.Thread(target=_stream, args=(url, s)) for s in streams]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 240
            while min(s.tokens for s in streams) < RECEIVED_AT_KILL:
                errors = [s.error for s in streams if s.error]
                assert not errors, errors
                assert time.monotonic() < deadline, [s.tokens for s in streams]
                time.sleep(0.05)
            started |= descendants(server.proc.pid)
            os.kill(server.proc.pid, signal.SIGKILL)
            assert server.proc.wait(timeout=30) == -signal.SIGKILL
            for thread in threads:
                thread.join(timeout=60)
            assert not any(s.done for s in streams), "a stream ended before the kill"
        assert _kill_all(started) == set(), "the killed control plane's Ray survived"
        received = {s.client_request_id: s.tokens for s in streams}
        assert _usage_rows(db) == [], "a stream in flight has a final usage row"
        open_at_kill = _open_rows(db)
        print(
            f"\nkill -9 with {STREAMS} streams in flight: {sum(received.values())} tokens "
            f"delivered ({sorted(received.values())}); {open_at_kill} requests left open"
        )

        # -- restart on the same data dir; the dead process's requests are settled -----------
        with moeserve_run(
            tmp_path,
            free_port(),
            env,
            ready_line=r"moeserve is up at",
            own_ray=True,
            ready_timeout_s=300,
        ) as again:
            started |= descendants(again.proc.pid)
            up = time.monotonic()
            while len(_usage_rows(db)) < STREAMS and time.monotonic() - up < SETTLED_WITHIN_S:
                time.sleep(1)
            settled_after_s = time.monotonic() - up
            started |= descendants(again.proc.pid)
            os.kill(again.proc.pid, signal.SIGTERM)  # how it stops is test_shutdown's concern
            again.proc.wait(timeout=120)
    finally:
        left = _kill_all(started)
    assert left == set(), f"processes left behind: {sorted(left)}"

    rows = _usage_rows(db)
    billed = {client: out for client, _, _, _, out in rows}
    delivered, total_billed = sum(received.values()), sum(billed.values())
    print(
        f"restart: settled {len(rows)} of {STREAMS} streams {settled_after_s:.0f} s after "
        f"it was up; delivered {delivered} tokens, billed {total_billed} "
        f"(+{sum(r[3] for r in rows)} prompt tokens); per stream (received, billed): "
        f"{sorted((received[c], billed.get(c, 0)) for c in received)}"
    )
    doubled = sum(n - 1 for n in Counter(r[0] for r in rows).values() if n > 1)
    assert doubled == 0
    assert set(billed) == set(received), f"billed none of {sorted(set(received) - set(billed))}"
    assert {r[2] for r in rows} == {INTERRUPTED_STATUS}
    for client, tokens in received.items():
        assert billed[client] >= tokens - CHECKPOINT_TOKENS, (client, tokens, billed[client])
    assert all(r[3] > 0 for r in rows)  # the prompt counted from the first chunk
    assert total_billed >= delivered - CHECKPOINT_TOKENS * STREAMS
    assert _open_rows(db) == 0

    # Metering prices each settled row once: its hour (closed two hours on) holds exactly
    # the rows' tokens at the rate card's prices, and a second run writes nothing.
    with migrated_engine(f"sqlite:///{db}") as engine:
        later = datetime.now(UTC) + timedelta(hours=2)
        assert run_metering(engine, context(), later).written > 0
        assert run_metering(engine, context(), later).written == 0
        priced = total(records(engine, usage_type="TOKEN"))
    expected = (sum(r[3] for r in rows) * DBRX_IN + total_billed * DBRX_OUT) / 1_000_000
    assert priced == expected, (priced, expected)
    assert priced > Decimal(0)
