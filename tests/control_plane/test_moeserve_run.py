"""The newcomer's first `moeserve run`: a generated admin token, progress, a curl command
that works, and a clean stop on Ctrl-C (`moeserve_process.py` runs the real console
script)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.control_plane.moeserve_process import (
    ENDPOINTS,
    app_status,
    apps_of,
    delete_ms_apps,
    free_port,
    moeserve_run,
    ms_apps,
    replica_ids,
)


def _curl_command(output: str) -> str:
    """The printed `curl ...` example with its backslash-continued lines joined."""
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("curl ")), None)
    assert start is not None, f"no curl command printed:\n{output}"
    parts = []
    for line in lines[start:]:
        parts.append(line.strip().removesuffix("\\").strip())
        if not line.rstrip().endswith("\\"):
            break
    return " ".join(parts)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.usefixtures("ray_cluster")
def test_moeserve_run_prints_a_token_and_a_curl_command_that_works_and_stops_on_ctrl_c(
    tmp_path: Path,
) -> None:
    """First start without MOESERVE_ADMIN_TOKEN: a generated admin token is printed once,
    progress lines while `databricks-dbrx-tiny` loads, then a curl command; pasted into a
    shell it answers a chat completion with tokens counted. Ctrl-C (SIGINT) exits 0.

    Attached to an external cluster (--ray-address), stopping the control plane leaves the
    shared endpoint's Serve app RUNNING: the cluster outlives this process and a restart on
    the same database adopts the app (same name) instead of loading the model again. With
    the local Ray that `moeserve run` starts itself, the apps end with that Ray instead."""
    port = free_port()
    env = {
        "MOESERVE_WORKERS__ENGINE__KV_CACHE_TOKENS": "2048",
        "MOESERVE_RECONCILE_INTERVAL_S": "0.5",
    }
    try:
        with moeserve_run(tmp_path, port, env, ready_line=r"^Ctrl-C stops moeserve") as server:
            output = server.output()
            tokens = re.findall(r"admin token \(shown once; keep it\): (\S+)", output)
            assert len(tokens) == 1, output
            token = tokens[0]
            assert token.startswith("dapi"), output
            assert output.count(token) >= 2  # printed, and used in the examples
            progress = re.findall(r"^databricks-dbrx-tiny: loading the model \.\.\. ", output, re.M)
            assert progress, output
            assert re.search(r"^databricks-dbrx-tiny: READY \(\d+\.\d s\)$", output, re.M), output
            assert output.index("loading the model") < output.index("READY (")

            # the billing dashboard's address, and a page there
            dashboard = re.findall(r"^billing dashboard: (\S+) ", output, re.M)
            assert dashboard == [f"{server.url}/billing"], output
            page = httpx.get(dashboard[0], timeout=10)
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]

            command = _curl_command(output)
            assert command.startswith(f"curl -s {server.url}/serving-endpoints/databricks-dbrx")
            assert token in command
            done = subprocess.run(
                ["bash", "-c", command], capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, done.stderr
            answer = json.loads(done.stdout)
            assert answer["choices"][0]["message"]["content"], answer
            usage = answer["usage"]
            assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0, usage
            assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

            with server.client(token) as client:  # the printed token is an admin's
                listed = client.get(ENDPOINTS).json()["endpoints"]
            (shared,) = [e for e in listed if e["name"] == "databricks-dbrx-tiny"]
            (app_name,) = apps_of(shared["id"])
            replicas = replica_ids(app_name)

            stopping = time.monotonic()
            os.kill(server.proc.pid, signal.SIGINT)
            assert server.proc.wait(timeout=30) == 0, server.tail()
            print(f"Ctrl-C -> exit 0 in {time.monotonic() - stopping:.1f} s")

        # Attached to an external cluster: the app and its replica keep running.
        app = ms_apps().get(app_name)
        assert app is not None and app_status(app) == "RUNNING", ms_apps()
        assert replica_ids(app_name) == replicas
    finally:
        delete_ms_apps()
