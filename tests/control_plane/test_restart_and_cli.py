"""The real `moeserve` console script as a user and an operator meet it: killed with
SIGKILL mid-deployment and restarted on the same database, and the newcomer's first
`moeserve run` (generated admin token, progress, a curl command that works, Ctrl-C).

Each test starts `.venv/bin/moeserve run` as a child process on a free 127.0.0.1 port with a
SQLite file in a tmp data dir, attached (`--ray-address`) to the session's Ray from the
`ray_cluster` fixture. Serve applications are detached, so they outlive a killed control
plane; the test process watches them with `serve.status()` and the Serve controller's
instance details. The fixture's `ray.init` enables Ray token auth for this process and its
children (`RAY_AUTH_MODE=token`); the child inherits that environment, which it needs to
attach to the cluster.

Last, a fast regression test (no Ray): a control plane whose host name is as long as a
Kubernetes pod name can still take endpoint leases on PostgreSQL.
"""

from __future__ import annotations

import json
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.control_plane.conftest import live_server, make_settings
from tests.control_plane.fake_provider import InstantProvider

ADMIN_TOKEN = "dapi-restart-test-admin-token"
MOESERVE = Path(sys.executable).with_name("moeserve")
ENDPOINTS = "/api/2.0/serving-endpoints"
LEASE_TTL_S = 3
# Fast ticks and a short lease so that a restarted process takes over within seconds;
# small KV caches so that tiny replicas start quickly on this 2-core machine.
FAST_ENV = {
    "MOESERVE_LEASE_TTL_S": str(LEASE_TTL_S),
    "MOESERVE_RECONCILE_INTERVAL_S": "0.5",
    "MOESERVE_WORKERS__KV_CACHE_TOKENS": "2048",
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ray_address() -> str:
    import ray

    address: str = ray.get_runtime_context().gcs_address
    return address


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOESERVE_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


@contextmanager
def moeserve_run(
    data_dir: Path, port: int, env: dict[str, str], *, ready_line: str = r"moeserve is up at"
) -> Iterator[Moeserve]:
    """`moeserve run` on 127.0.0.1:port; yields once it printed `ready_line`. Killed by PID
    on the way out when still running."""
    command = [
        str(MOESERVE),
        "run",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--ray-address",
        _ray_address(),
    ]
    proc = subprocess.Popen(
        command,
        cwd=data_dir,
        env=_child_env(env),
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
        server.wait_for_line(ready_line, timeout=45)
        yield server
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        reader.join(timeout=5)


# -- Ray Serve as the test sees it ----------------------------------------------------------


def _ms_apps() -> dict[str, Any]:
    """Every moeserve (`ms-`) application in the cluster: name -> serve.status() overview."""
    from ray import serve

    return {n: a for n, a in serve.status().applications.items() if n.startswith("ms-")}


def _apps_of(endpoint_id: str) -> dict[str, Any]:
    return {n: a for n, a in _ms_apps().items() if n.startswith(f"ms-{endpoint_id}-")}


def _replica_ids(app_name: str) -> set[str]:
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


def _replica_states(app: Any) -> dict[str, int]:
    states: dict[str, int] = {}
    for deployment in app.deployments.values():
        for state, count in deployment.replica_states.items():
            key = str(getattr(state, "value", state))
            states[key] = states.get(key, 0) + count
    return states


def _status(app: Any) -> str:
    return str(getattr(app.status, "value", app.status))


class _Orphan:
    def __call__(self) -> str:
        return "orphan"


def _plant_orphan() -> str:
    """A Serve app named like moeserve's whose endpoint is in no database (as one left by
    an endpoint deleted while its control plane was down)."""
    from ray import serve
    from ray.serve.api import _run

    name = f"ms-{uuid.uuid4().hex}-orphan-0000000000"
    app = serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})(_Orphan).bind()
    _run(app, _blocking=False, name=name, route_prefix=None)
    return name


def _delete_ms_apps() -> None:
    """Leave the session's Ray as the test found it: no `ms-` apps (best effort)."""
    from ray import serve

    try:
        for name in _ms_apps():
            serve.delete(name, _blocking=False)
    except Exception as error:  # no Serve instance when the child never started
        print(f"cleanup: {error!r}")


def wait_for(predicate: Callable[[], Any], timeout: float, what: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what()}")


# -- endpoints through the API --------------------------------------------------------------


def _entity(entity_name: str) -> dict[str, Any]:
    return {
        "entity_name": entity_name,
        "entity_version": "1",
        "workload_size": "Small",
        "scale_to_zero_enabled": False,
    }


def _state(client: httpx.Client, name: str) -> dict[str, Any]:
    response = client.get(f"{ENDPOINTS}/{name}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _stored_state(data_dir: Path, endpoint_id: str) -> tuple[str, str, int]:
    """(ready, config_update, config_version) straight from the SQLite file."""
    with sqlite3.connect(data_dir / "moeserve.db") as db:
        row = db.execute(
            "SELECT ready, config_update, config_version FROM endpoints WHERE id = ?",
            (endpoint_id,),
        ).fetchone()
    assert row is not None, f"endpoint {endpoint_id} is not in the database"
    return row[0], row[1], row[2]


def _kill_once_deploying(server: Moeserve, endpoint_id: str, known: set[str]) -> str:
    """SIGKILL the control plane as soon as Serve shows a replica (in any state) of an app of
    this endpoint that is not in `known`; returns that app's name."""

    def started() -> str | None:
        for name, app in _apps_of(endpoint_id).items():
            if name not in known and _replica_states(app):
                return name
        return None

    app_name = wait_for(started, 30, lambda: f"a replica of a new app:\n{server.tail()}")
    os.kill(server.proc.pid, signal.SIGKILL)
    assert server.proc.wait(timeout=10) == -signal.SIGKILL
    return str(app_name)


def _wait_converged(
    client: httpx.Client, name: str, config_version: int, timeout: float
) -> dict[str, Any]:
    last: dict[str, Any] = {}

    def converged() -> bool:
        nonlocal last
        last = _state(client, name)
        return (
            last["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
            and last.get("config", {}).get("config_version") == config_version
        )

    wait_for(converged, timeout, lambda: f"{name} READY at version {config_version}: {last}")
    return last


def _assert_only_app_running(endpoint_id: str, app_name: str, replicas: int) -> None:
    """The endpoint has exactly `app_name`, RUNNING with exactly `replicas` replicas, and no
    `ms-` app of any other (unknown) endpoint is left. Waits for deletions to finish (bounded),
    then checks once more after a few reconcile ticks that nothing new appeared."""
    assert app_name.startswith(f"ms-{endpoint_id}-"), app_name

    def exact() -> bool:
        apps = _ms_apps()
        return (
            set(apps) == {app_name}
            and _status(apps[app_name]) == "RUNNING"
            and _replica_states(apps[app_name]) == {"RUNNING": replicas}
        )

    def describe() -> str:
        return f"only {app_name} RUNNING with {replicas} replica(s); Serve has " + str(
            {n: (_status(a), _replica_states(a)) for n, a in _ms_apps().items()}
        )

    wait_for(exact, 20, describe)
    time.sleep(1.5)  # three reconcile ticks: a spurious deploy would show by now
    assert exact(), describe()


# -- 1. kill -9 and restart -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.usefixtures("ray_cluster")
def test_control_plane_killed_while_an_endpoint_deploys_adopts_its_app_on_restart(
    tmp_path: Path,
) -> None:
    """SIGKILL while the endpoint is NOT_READY/IN_PROGRESS and its replica is starting; a
    process restarted on the same database takes the lease over once it expires, adopts the
    app (same replica: no second deploy), removes an orphaned `ms-` app, reaches
    READY/NOT_UPDATING, and deletes the app when the endpoint is deleted."""
    port = _free_port()
    env = {**FAST_ENV, "MOESERVE_ADMIN_TOKEN": ADMIN_TOKEN, "MOESERVE_SHARED_ENDPOINTS": "[]"}
    name = "restart-create"
    try:
        with moeserve_run(tmp_path, port, env) as first, first.client() as client:
            created = client.post(
                ENDPOINTS,
                json={"name": name, "config": {"served_entities": [_entity("dbrx-tiny")]}},
            )
            assert created.status_code == 200, created.text
            assert created.json()["state"] == {"ready": "NOT_READY", "config_update": "IN_PROGRESS"}
            endpoint_id = created.json()["id"]
            app_name = _kill_once_deploying(first, endpoint_id, set())
            replicas_before = _replica_ids(app_name)
        # The kill landed mid-deployment: nothing recorded READY, and Serve is still deploying.
        assert _stored_state(tmp_path, endpoint_id)[:2] == ("NOT_READY", "IN_PROGRESS")
        assert replicas_before, "the app had a replica when the control plane died"
        orphan = _plant_orphan()
        assert orphan in _ms_apps()

        restarted_at = time.monotonic()
        with moeserve_run(tmp_path, port, env) as second, second.client() as client:
            detail = _wait_converged(client, name, config_version=1, timeout=40)
            converged_s = time.monotonic() - restarted_at
            print(f"restart -> READY/NOT_UPDATING in {converged_s:.1f} s")
            entity = detail["config"]["served_entities"][0]
            assert entity["state"]["deployment"] == "DEPLOYMENT_READY"

            # Small = 4 concurrent requests, 16 per replica by default: one replica.
            _assert_only_app_running(endpoint_id, app_name, replicas=1)
            assert _replica_ids(app_name) == replicas_before, "the app was replaced"

            assert client.delete(f"{ENDPOINTS}/{name}").status_code == 200
            wait_for(
                lambda: not _apps_of(endpoint_id),
                20,
                lambda: f"{app_name} to be deleted; Serve has {list(_ms_apps())}",
            )
            assert client.get(f"{ENDPOINTS}/{name}").status_code == 404
            assert second.proc.poll() is None, second.tail()
    finally:
        _delete_ms_apps()


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.usefixtures("ray_cluster")
def test_control_plane_killed_during_a_config_update_finishes_the_rollout_on_restart(
    tmp_path: Path,
) -> None:
    """SIGKILL while a config update (dbrx-tiny -> mixtral-tiny) rolls: the restarted process
    finishes it (config_version 2, READY/NOT_UPDATING, queries answered by the new model),
    adopts the new app and retires the old one, leaving exactly one app."""
    port = _free_port()
    env = {**FAST_ENV, "MOESERVE_ADMIN_TOKEN": ADMIN_TOKEN, "MOESERVE_SHARED_ENDPOINTS": "[]"}
    name = "restart-update"
    try:
        with moeserve_run(tmp_path, port, env) as first, first.client() as client:
            created = client.post(
                ENDPOINTS,
                json={"name": name, "config": {"served_entities": [_entity("dbrx-tiny")]}},
            )
            assert created.status_code == 200, created.text
            endpoint_id = created.json()["id"]
            _wait_converged(client, name, config_version=1, timeout=40)
            (old_app,) = _apps_of(endpoint_id)

            updated = client.put(
                f"{ENDPOINTS}/{name}/config", json={"served_entities": [_entity("mixtral-tiny")]}
            )
            assert updated.status_code == 200, updated.text
            assert updated.json()["state"]["config_update"] == "IN_PROGRESS"
            new_app = _kill_once_deploying(first, endpoint_id, {old_app})
            replicas_before = _replica_ids(new_app)
        assert _stored_state(tmp_path, endpoint_id) == ("READY", "IN_PROGRESS", 1)
        assert replicas_before

        restarted_at = time.monotonic()
        with moeserve_run(tmp_path, port, env) as second, second.client() as client:
            detail = _wait_converged(client, name, config_version=2, timeout=40)
            print(f"restart -> config_version 2 READY in {time.monotonic() - restarted_at:.1f} s")
            assert "pending_config" not in detail
            assert [e["entity_name"] for e in detail["config"]["served_entities"]] == [
                "mixtral-tiny"
            ]
            answer = client.post(
                f"/serving-endpoints/{name}/invocations",
                json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["model"].startswith("mixtral-tiny")

            # The old app is retired after its grace period (10 s), then deleted.
            _assert_only_app_running(endpoint_id, new_app, replicas=1)
            assert _replica_ids(new_app) == replicas_before, "the new app was replaced"
            assert second.proc.poll() is None, second.tail()
    finally:
        _delete_ms_apps()


# -- 2. the newcomer path -------------------------------------------------------------------


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
    port = _free_port()
    env = {"MOESERVE_WORKERS__KV_CACHE_TOKENS": "2048", "MOESERVE_RECONCILE_INTERVAL_S": "0.5"}
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
            (app_name,) = _apps_of(shared["id"])
            replicas = _replica_ids(app_name)

            stopping = time.monotonic()
            os.kill(server.proc.pid, signal.SIGINT)
            assert server.proc.wait(timeout=30) == 0, server.tail()
            print(f"Ctrl-C -> exit 0 in {time.monotonic() - stopping:.1f} s")

        # Attached to an external cluster: the app and its replica keep running.
        app = _ms_apps().get(app_name)
        assert app is not None and _status(app) == "RUNNING", _ms_apps()
        assert _replica_ids(app_name) == replicas
    finally:
        _delete_ms_apps()


# -- the lease owner on a long host name ----------------------------------------------------


def test_a_control_plane_on_a_host_with_a_63_char_name_claims_leases_on_postgresql(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted control plane must be able to take endpoint leases over. Its lease owner
    is `host-pid-random`, stored in endpoints.lease_owner (64 chars); Kubernetes pod names
    (the host name in a pod) run up to 63 characters. With the whole host name in it, every
    tick failed on PostgreSQL (StringDataRightTruncation) and nothing was ever deployed."""
    monkeypatch.setattr(socket, "gethostname", lambda: "moeserve-control-plane-" + "x" * 40)
    settings = make_settings(postgres_url, tmp_path, shared_endpoints=[])
    with live_server(settings, InstantProvider()) as server, server.client() as client:
        body = {"name": "long-host", "config": {"served_entities": [_entity("dbrx-tiny")]}}
        assert client.post(ENDPOINTS, json=body).status_code == 200
        last: dict[str, Any] = {}

        def ready() -> bool:
            nonlocal last
            last = _state(client, "long-host")
            return bool(last["state"]["ready"] == "READY")

        wait_for(ready, 15, lambda: f"long-host READY: {last}")
        owner = server.plane.reconciler.owner
    assert owner.startswith("moeserve-control-plane-") and len(owner) <= 64, owner
