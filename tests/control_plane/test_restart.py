"""A control plane killed with SIGKILL mid-deployment and restarted on the same database
adopts or finishes what it started (`moeserve_process.py` runs the real console script);
and a control plane whose host name is as long as a Kubernetes pod name can still take
endpoint leases on PostgreSQL (a fast regression test, no Ray).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.control_plane.conftest import live_server, make_settings, wait_for
from tests.control_plane.fake_provider import InstantProvider
from tests.control_plane.moeserve_process import (
    ADMIN_TOKEN,
    ENDPOINTS,
    FAST_ENV,
    apps_of,
    assert_only_app_running,
    delete_ms_apps,
    endpoint_state,
    entity_config,
    free_port,
    kill_once_deploying,
    moeserve_run,
    ms_apps,
    plant_orphan,
    replica_ids,
    stored_state,
    wait_converged,
)


def restart_env() -> dict[str, str]:
    return {**FAST_ENV, "MOESERVE_ADMIN_TOKEN": ADMIN_TOKEN, "MOESERVE_SHARED_ENDPOINTS": "[]"}


def create_dbrx_tiny(client: httpx.Client, name: str) -> httpx.Response:
    body = {"name": name, "config": {"served_entities": [entity_config("dbrx-tiny")]}}
    created = client.post(ENDPOINTS, json=body)
    assert created.status_code == 200, created.text
    return created


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
    port, env = free_port(), restart_env()
    name = "restart-create"
    try:
        with moeserve_run(tmp_path, port, env) as first, first.client() as client:
            created = create_dbrx_tiny(client, name)
            assert created.json()["state"] == {"ready": "NOT_READY", "config_update": "IN_PROGRESS"}
            endpoint_id = created.json()["id"]
            app_name = kill_once_deploying(first, endpoint_id, set())
            replicas_before = replica_ids(app_name)
        # The kill landed mid-deployment: nothing recorded READY, and Serve is still deploying.
        assert stored_state(tmp_path, endpoint_id)[:2] == ("NOT_READY", "IN_PROGRESS")
        assert replicas_before, "the app had a replica when the control plane died"
        orphan = plant_orphan()
        assert orphan in ms_apps()

        restarted_at = time.monotonic()
        with moeserve_run(tmp_path, port, env) as second, second.client() as client:
            detail = wait_converged(client, name, config_version=1, timeout=40)
            converged_s = time.monotonic() - restarted_at
            print(f"restart -> READY/NOT_UPDATING in {converged_s:.1f} s")
            entity = detail["config"]["served_entities"][0]
            assert entity["state"]["deployment"] == "DEPLOYMENT_READY"

            # Small = 4 concurrent requests, 16 per replica by default: one replica.
            assert_only_app_running(endpoint_id, app_name, replicas=1)
            assert replica_ids(app_name) == replicas_before, "the app was replaced"

            assert client.delete(f"{ENDPOINTS}/{name}").status_code == 200
            wait_for(
                lambda: not apps_of(endpoint_id),
                20,
                lambda: f"{app_name} to be deleted; Serve has {list(ms_apps())}",
            )
            assert client.get(f"{ENDPOINTS}/{name}").status_code == 404
            assert second.proc.poll() is None, second.tail()
    finally:
        delete_ms_apps()


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.usefixtures("ray_cluster")
def test_control_plane_killed_during_a_config_update_finishes_the_rollout_on_restart(
    tmp_path: Path,
) -> None:
    """SIGKILL while a config update (dbrx-tiny -> mixtral-tiny) rolls: the restarted process
    finishes it (config_version 2, READY/NOT_UPDATING, queries answered by the new model),
    adopts the new app and retires the old one, leaving exactly one app."""
    port, env = free_port(), restart_env()
    name = "restart-update"
    try:
        with moeserve_run(tmp_path, port, env) as first, first.client() as client:
            created = create_dbrx_tiny(client, name)
            endpoint_id = created.json()["id"]
            wait_converged(client, name, config_version=1, timeout=40)
            (old_app,) = apps_of(endpoint_id)

            updated = client.put(
                f"{ENDPOINTS}/{name}/config",
                json={"served_entities": [entity_config("mixtral-tiny")]},
            )
            assert updated.status_code == 200, updated.text
            assert updated.json()["state"]["config_update"] == "IN_PROGRESS"
            new_app = kill_once_deploying(first, endpoint_id, {old_app})
            replicas_before = replica_ids(new_app)
        assert stored_state(tmp_path, endpoint_id) == ("READY", "IN_PROGRESS", 1)
        assert replicas_before

        restarted_at = time.monotonic()
        with moeserve_run(tmp_path, port, env) as second, second.client() as client:
            detail = wait_converged(client, name, config_version=2, timeout=40)
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
            assert_only_app_running(endpoint_id, new_app, replicas=1)
            assert replica_ids(new_app) == replicas_before, "the new app was replaced"
            assert second.proc.poll() is None, second.tail()
    finally:
        delete_ms_apps()


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
        body = {"name": "long-host", "config": {"served_entities": [entity_config("dbrx-tiny")]}}
        assert client.post(ENDPOINTS, json=body).status_code == 200
        last: dict[str, Any] = {}

        def ready() -> bool:
            nonlocal last
            last = endpoint_state(client, "long-host")
            return bool(last["state"]["ready"] == "READY")

        wait_for(ready, 15, lambda: f"long-host READY: {last}")
        owner = server.plane.reconciler.owner
    assert owner.startswith("moeserve-control-plane-") and len(owner) <= 64, owner
