"""The real `moeserve` console script as a child process, and Ray Serve as the restart and
`moeserve run` tests see it.

A child runs `.venv/bin/moeserve run` on a free 127.0.0.1 port with a SQLite file in a tmp
data dir, attached (`--ray-address`) to the session's Ray from the `ray_cluster` fixture.
Serve applications are detached, so they outlive a killed control plane; the test process
watches them with `serve.status()` and the Serve controller's instance details. The
fixture's `ray.init` enables Ray token auth for this process and its children
(`RAY_AUTH_MODE=token`); the child inherits that environment, which it needs to attach to
the cluster.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.control_plane.conftest import wait_for

ADMIN_TOKEN = "dapi-restart-test-admin-token"
MOESERVE = Path(sys.executable).with_name("moeserve")
ENDPOINTS = "/api/2.0/serving-endpoints"
LEASE_TTL_S = 3
# Fast ticks and a short lease so that a restarted process takes over within seconds;
# small KV caches so that tiny replicas start quickly on this 2-core machine.
FAST_ENV = {
    "MOESERVE_LEASE_TTL_S": str(LEASE_TTL_S),
    "MOESERVE_RECONCILE_INTERVAL_S": "0.5",
    "MOESERVE_WORKERS__ENGINE__KV_CACHE_TOKENS": "2048",
}


# -- the child process ----------------------------------------------------------------------


@dataclass
class Moeserve:
    proc: subprocess.Popen[str]
    url: str
    lines: list[str] = field(default_factory=list)  # stdout and stderr, appended by a thread

    def output(self) -> str:
        return "".join(self.lines)

    def tail(self, n: int = 40) -> str:
        return "".join(self.lines[-n:])

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                match = regex.search(line)
                if match:
                    return match
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader thread drain the pipe
                raise AssertionError(
                    f"moeserve exited ({self.proc.returncode}) before printing {pattern!r}:\n"
                    + self.tail()
                )
            time.sleep(0.05)
        raise AssertionError(f"moeserve did not print {pattern!r} in {timeout} s:\n{self.tail()}")

    def client(self, token: str = ADMIN_TOKEN) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ray_address() -> str:
    import ray

    address: str = ray.get_runtime_context().gcs_address
    return address


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOESERVE_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


@contextmanager
def moeserve_run(
    data_dir: Path,
    port: int,
    env: dict[str, str],
    *,
    ready_line: str = r"moeserve is up at",
    own_ray: bool = False,
    ready_timeout_s: float = 45,
) -> Iterator[Moeserve]:
    """`moeserve run` on 127.0.0.1:port, attached to the session's Ray (or, `own_ray`,
    starting its own local Ray, as `make run` does); yields once it printed `ready_line`.
    Killed by PID on the way out when still running."""
    command = [
        str(MOESERVE),
        "run",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
    ]
    if not own_ray:
        command += ["--ray-address", ray_address()]
    proc = subprocess.Popen(
        command,
        cwd=data_dir,
        env=child_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        bufsize=1,
    )
    server = Moeserve(proc, f"http://127.0.0.1:{port}")

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            server.lines.append(line)

    reader = threading.Thread(target=pump, name=f"moeserve-{proc.pid}-stdout", daemon=True)
    reader.start()
    try:
        server.wait_for_line(ready_line, timeout=ready_timeout_s)
        yield server
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        reader.join(timeout=5)


# -- Ray Serve as the test sees it ----------------------------------------------------------


def ms_apps() -> dict[str, Any]:
    """Every moeserve (`ms-`) application in the cluster: name -> serve.status() overview."""
    from ray import serve

    return {n: a for n, a in serve.status().applications.items() if n.startswith("ms-")}


def apps_of(endpoint_id: str) -> dict[str, Any]:
    return {n: a for n, a in ms_apps().items() if n.startswith(f"ms-{endpoint_id}-")}


def replica_ids(app_name: str) -> set[str]:
    """Ids of the app's live replicas, from the Serve controller's instance details."""
    import ray
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    assert client is not None
    details = ray.get(client._controller.get_serve_instance_details.remote(), timeout=30)
    app = details["applications"].get(app_name)
    if app is None:
        return set()
    return {
        str(replica["replica_id"])
        for deployment in app["deployments"].values()
        for replica in deployment["replicas"]
    }


def replica_states(app: Any) -> dict[str, int]:
    states: dict[str, int] = {}
    for deployment in app.deployments.values():
        for state, count in deployment.replica_states.items():
            key = str(getattr(state, "value", state))
            states[key] = states.get(key, 0) + count
    return states


def app_status(app: Any) -> str:
    return str(getattr(app.status, "value", app.status))


class Orphan:
    def __call__(self) -> str:
        return "orphan"


def plant_orphan() -> str:
    """A Serve app named like moeserve's whose endpoint is in no database (as one left by
    an endpoint deleted while its control plane was down)."""
    from ray import serve
    from ray.serve.api import _run

    name = f"ms-{uuid.uuid4().hex}-orphan-0000000000"
    app = serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})(Orphan).bind()
    _run(app, _blocking=False, name=name, route_prefix=None)
    return name


def delete_ms_apps() -> None:
    """Leave the session's Ray as the test found it: no `ms-` apps (best effort)."""
    from ray import serve

    try:
        for name in ms_apps():
            serve.delete(name, _blocking=False)
    except Exception as error:  # no Serve instance when the child never started
        print(f"cleanup: {error!r}")


# -- endpoints through the API --------------------------------------------------------------


def entity_config(entity_name: str) -> dict[str, Any]:
    return {
        "entity_name": entity_name,
        "entity_version": "1",
        "workload_size": "Small",
        "scale_to_zero_enabled": False,
    }


def endpoint_state(client: httpx.Client, name: str) -> dict[str, Any]:
    response = client.get(f"{ENDPOINTS}/{name}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def stored_state(data_dir: Path, endpoint_id: str) -> tuple[str, str, int]:
    """(ready, config_update, config_version) straight from the SQLite file."""
    with sqlite3.connect(data_dir / "moeserve.db") as db:
        row = db.execute(
            "SELECT ready, config_update, config_version FROM endpoints WHERE id = ?",
            (endpoint_id,),
        ).fetchone()
    assert row is not None, f"endpoint {endpoint_id} is not in the database"
    return row[0], row[1], row[2]


def kill_once_deploying(server: Moeserve, endpoint_id: str, known: set[str]) -> str:
    """SIGKILL the control plane as soon as Serve shows a replica (in any state) of an app of
    this endpoint that is not in `known`; returns that app's name."""

    def started() -> str | None:
        for name, app in apps_of(endpoint_id).items():
            if name not in known and replica_states(app):
                return name
        return None

    app_name = wait_for(started, 30, lambda: f"a replica of a new app:\n{server.tail()}")
    os.kill(server.proc.pid, signal.SIGKILL)
    assert server.proc.wait(timeout=10) == -signal.SIGKILL
    return str(app_name)


def wait_converged(
    client: httpx.Client, name: str, config_version: int, timeout: float
) -> dict[str, Any]:
    last: dict[str, Any] = {}

    def converged() -> bool:
        nonlocal last
        last = endpoint_state(client, name)
        return (
            last["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
            and last.get("config", {}).get("config_version") == config_version
        )

    wait_for(converged, timeout, lambda: f"{name} READY at version {config_version}: {last}")
    return last


def assert_only_app_running(endpoint_id: str, app_name: str, replicas: int) -> None:
    """The endpoint has exactly `app_name`, RUNNING with exactly `replicas` replicas, and no
    `ms-` app of any other (unknown) endpoint is left. Waits for deletions to finish (bounded),
    then checks once more after a few reconcile ticks that nothing new appeared."""
    assert app_name.startswith(f"ms-{endpoint_id}-"), app_name

    def exact() -> bool:
        apps = ms_apps()
        return (
            set(apps) == {app_name}
            and app_status(apps[app_name]) == "RUNNING"
            and replica_states(apps[app_name]) == {"RUNNING": replicas}
        )

    def describe() -> str:
        return f"only {app_name} RUNNING with {replicas} replica(s); Serve has " + str(
            {n: (app_status(a), replica_states(a)) for n, a in ms_apps().items()}
        )

    wait_for(exact, 20, describe)
    time.sleep(1.5)  # three reconcile ticks: a spurious deploy would show by now
    assert exact(), describe()
