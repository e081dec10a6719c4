"""`moeserve run` stopped as Kubernetes, Docker and systemd stop a process: SIGTERM while
streams are in flight (issue 14, findings 4, 11 and 12).

A real `moeserve run` child with its own local Ray (as `make run` starts it) and the
`databricks-dbrx-tiny` shared endpoint on the real engine. Before the fix, SIGTERM killed
the process about 3 s later (Ray's failure-signal handler): streams were cut, in-flight
usage rows lost, the lifespan shutdown never ran and the local Ray was orphaned; an
operator-supplied admin token was printed on every start; and the local Ray listened on
every interface (findings 4, 11 and 12)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.control_plane.moeserve_process import child_env, free_port, moeserve_run
from tests.reliability.processes import (
    descendants,
    is_loopback,
    listening_addresses,
    running,
)

TOKEN = "dapi-operator-supplied-token-7f3a"
STREAMS = 6
MAX_TOKENS = 96


@dataclass
class Stream:
    started: threading.Event = field(default_factory=threading.Event)
    events: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def done(self) -> bool:
        return bool(self.events) and self.events[-1] == "[DONE]"

    def usage(self) -> dict[str, int] | None:
        for event in self.events:
            if event != "[DONE]" and json.loads(event).get("usage"):
                usage: dict[str, int] = json.loads(event)["usage"]
                return usage
        return None


def _stream(url: str, stream: Stream) -> None:
    body = {
        "messages": [{"role": "user", "content": "Tell me a long story about experts."}],
        "max_tokens": MAX_TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},
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
                if line.startswith("data: "):
                    stream.events.append(line.removeprefix("data: "))
                    stream.started.set()
    except httpx.HTTPError as exc:
        stream.error = repr(exc)
    finally:
        stream.started.set()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigterm_drains_every_stream_bills_each_once_and_stops_its_ray(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "MOESERVE_ADMIN_TOKEN": TOKEN,
        "MOESERVE_WORKERS__ENGINE__KV_CACHE_TOKENS": "4096",
        "MOESERVE_RECONCILE_INTERVAL_S": "0.5",
        "MOESERVE_RAY_NUM_CPUS": "4",
        "MOESERVE_SHARED_ENDPOINTS": json.dumps(
            [{"name": "databricks-dbrx-tiny", "entity_name": "dbrx-tiny"}]
        ),
    }
    with moeserve_run(
        tmp_path,
        port,
        child_env(env),
        ready_line=r"^Ctrl-C stops moeserve",
        own_ray=True,
        ready_timeout_s=150,
    ) as server:
        # Finding 12: a token the operator supplied is never printed.
        assert TOKEN not in server.output(), server.output()
        ray_processes = descendants(server.proc.pid)
        assert ray_processes, "no local Ray processes found under moeserve"
        # Finding 11: its Ray (GCS, raylet, workers, agents, exporters) listens on loopback
        # only, like the API (--host 127.0.0.1); before the fix, on every interface.
        listening = listening_addresses(ray_processes | {server.proc.pid})
        exposed = {str(address): ports for address, ports in listening.items()}
        assert listening, "found no listening sockets under moeserve"
        assert all(is_loopback(address) for address in listening), exposed
        sockets = sum(len(ports) for ports in listening.values())
        print(f"\n{sockets} listening sockets of {len(ray_processes) + 1} processes: loopback")

        url = f"{server.url}/serving-endpoints/databricks-dbrx-tiny/invocations"
        streams = [Stream() for _ in range(STREAMS)]
        threads = [threading.Thread(target=_stream, args=(url, s)) for s in streams]
        for thread in threads:
            thread.start()
        for stream in streams:
            assert stream.started.wait(60), "a stream never started"
        assert not any(stream.done for stream in streams), "streams ended before SIGTERM"

        stopping = time.monotonic()
        os.kill(server.proc.pid, signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=90)
        # Finding 4: every stream completes (the grace period is 30 s by default).
        for stream in streams:
            assert stream.error is None, stream.error
            assert stream.done, f"stream cut after {len(stream.events)} events"
        assert server.proc.wait(timeout=90) == 0, server.tail()
        print(f"SIGTERM -> {STREAMS} streams done, exit 0 in {time.monotonic() - stopping:.1f} s")

    # One usage row per stream, with the tokens each stream was told it used.
    with sqlite3.connect(tmp_path / "moeserve.db") as db:
        rows = db.execute(
            "SELECT input_token_count, output_token_count, status_code FROM endpoint_usage"
        ).fetchall()
    delivered = sorted(
        (usage["prompt_tokens"], usage["completion_tokens"], 200)
        for stream in streams
        if (usage := stream.usage()) is not None
    )
    assert len(delivered) == STREAMS
    assert sorted(rows) == delivered
    # Its Ray is gone with it.
    deadline = time.monotonic() + 30
    while (alive := {p for p in ray_processes if running(p)}) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive, f"Ray processes left behind: {sorted(alive)}"
