"""A served entity's environment variables (issue 14, finding 1): only allow-listed names
reach a replica's process environment, values are never shown back, and secret references
resolve from the operator's secrets directory, per workspace, or are refused.

Before this, any name went into the replica's Ray `runtime_env` (`PYTHONWARNINGS` plus
`BROWSER` ran a shell command as the serving host's user) and every value was shown to
anyone with CAN_VIEW."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.control_plane.conftest import LiveServer, live_server, make_settings, wait_for
from tests.control_plane.fake_provider import InstantProvider
from tests.control_plane.test_tenancy import default_workspace, new_user, new_workspace

BASE = "/api/2.0/serving-endpoints"


def entity(**variables: str) -> dict[str, Any]:
    return {
        "entity_name": "dbrx-tiny",
        "entity_version": "1",
        "workload_size": "Small",
        "environment_vars": variables,
    }


def config(**variables: str) -> dict[str, Any]:
    return {"served_entities": [entity(**variables)]}


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    return tmp_path / "secrets"


@pytest.fixture
def server(tmp_path: Path, secrets_dir: Path) -> Iterator[tuple[LiveServer, InstantProvider]]:
    provider = InstantProvider()
    settings = make_settings(
        f"sqlite:///{tmp_path / 'moeserve.db'}",
        tmp_path,
        shared_endpoints=[],
        environment={"secrets_dir": secrets_dir},  # the default allow-list: APP_*
    )
    with live_server(settings, provider) as live:
        yield live, provider


@pytest.mark.parametrize(
    "name",
    [
        "PYTHONWARNINGS",
        "BROWSER",
        "LD_PRELOAD",
        "PYTHONPATH",
        "RAY_ADDRESS",
        "CUDA_VISIBLE_DEVICES",
        "NCCL_SOCKET_IFNAME",
        "OMP_NUM_THREADS",
        "PATH",
        "HOME",
    ],
)
def test_variables_that_steer_the_host_are_refused_naming_them(
    server: tuple[LiveServer, InstantProvider], name: str
) -> None:
    live, provider = server
    with live.client() as http:
        response = http.post(BASE, json={"name": "env", "config": config(**{name: "x"})})
        assert response.status_code == 400, response.text
        assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        assert name in response.json()["message"]
        assert http.get(f"{BASE}/env").status_code == 404  # nothing stored
    assert provider.deploy_calls == []  # nothing deployed


@pytest.mark.parametrize("name", ["app_lower", "1APP", "APP-X", "APP X", "APP=X", "", "APP\x00"])
def test_malformed_names_are_refused(server: tuple[LiveServer, InstantProvider], name: str) -> None:
    live, _ = server
    with live.client() as http:
        response = http.post(BASE, json={"name": "env", "config": config(**{name: "x"})})
    assert response.status_code == 400, response.text
    assert "^[A-Z_][A-Z0-9_]*$" in response.json()["message"]


def test_a_value_with_nul_is_refused(server: tuple[LiveServer, InstantProvider]) -> None:
    live, _ = server
    with live.client() as http:
        response = http.post(BASE, json={"name": "env", "config": config(APP_X="a\x00b")})
    assert response.status_code == 400
    assert "NUL" in response.json()["message"]


def test_allowed_values_reach_the_replica_and_are_never_shown(
    server: tuple[LiveServer, InstantProvider],
) -> None:
    live, provider = server
    with live.client() as http:
        created = http.post(BASE, json={"name": "env", "config": config(APP_GREETING="hunter2")})
        assert created.status_code == 200, created.text
        viewer = new_user(live, default_workspace(live), "viewer")
        granted = http.patch(
            f"/api/2.0/permissions/serving-endpoints/{created.json()['id']}",
            json={"access_control_list": [{"user_name": "viewer", "permission_level": "CAN_VIEW"}]},
        )
        assert granted.status_code == 200, granted.text
        wait_for(lambda: http.get(f"{BASE}/env").json().get("config"), what="a live config")
        shown = [created.json(), http.get(f"{BASE}/env").json()]
        with live.client(viewer) as as_viewer:
            shown.append(as_viewer.get(f"{BASE}/env").json())
            shown.append(as_viewer.get(BASE).json()["endpoints"][0])
    for body in shown:
        assert "hunter2" not in str(body)
    served = shown[1]["config"]["served_entities"][0]
    assert served["environment_vars"] == {"APP_GREETING": "REDACTED"}
    spec = _wait_deployed(provider)
    assert spec.worker.environment_vars == {"APP_GREETING": "hunter2"}


def test_secret_references_resolve_per_workspace(
    server: tuple[LiveServer, InstantProvider], secrets_dir: Path
) -> None:
    live, provider = server
    mine = default_workspace(live)
    theirs = new_workspace(live, "theirs")
    for workspace, value in ((mine, "my-key\n"), (theirs, "their-key")):
        (secrets_dir / workspace / "llm").mkdir(parents=True)
        (secrets_dir / workspace / "llm" / "api_key").write_text(value)
    reference = "{{secrets/llm/api_key}}"
    with live.client() as http:
        created = http.post(BASE, json={"name": "env", "config": config(APP_KEY=reference)})
        assert created.status_code == 200, created.text
        # The reference is shown as given; the replica gets this workspace's secret.
        wait_for(lambda: http.get(f"{BASE}/env").json().get("config"), what="a live config")
        served = http.get(f"{BASE}/env").json()["config"]["served_entities"][0]
        assert served["environment_vars"] == {"APP_KEY": reference}
        assert _wait_deployed(provider).worker.environment_vars == {"APP_KEY": "my-key"}
        for missing in ("{{secrets/llm/other}}", "{{secrets/../api_key}}", "{{secrets/x/..}}"):
            response = http.post(BASE, json={"name": "env2", "config": config(APP_KEY=missing)})
            assert response.status_code == 400, (missing, response.text)
            assert "no secret" in response.json()["message"]
    # Another workspace's admin reaches only that workspace's secrets.
    other_admin = new_user(live, theirs, "their-admin", admin=True)
    with live.client(other_admin) as http:
        created = http.post(BASE, json={"name": "env", "config": config(APP_KEY=reference)})
        assert created.status_code == 200, created.text
    wait_for(lambda: len(provider.apps) == 2, timeout=30, what="both deployments")
    deployed = {spec.worker.environment_vars["APP_KEY"] for spec in _specs(provider)}
    assert deployed == {"my-key", "their-key"}


def test_secret_references_without_a_secrets_store_are_refused(tmp_path: Path) -> None:
    settings = make_settings(
        f"sqlite:///{tmp_path / 'moeserve.db'}", tmp_path, shared_endpoints=[], environment={}
    )
    with live_server(settings, InstantProvider()) as live, live.client() as http:
        body = {"name": "env", "config": config(APP_KEY="{{secrets/llm/api_key}}")}
        response = http.post(BASE, json=body)
    assert response.status_code == 400
    assert "secrets store" in response.json()["message"]


def test_the_operator_widens_the_allow_list(tmp_path: Path) -> None:
    settings = make_settings(
        f"sqlite:///{tmp_path / 'moeserve.db'}",
        tmp_path,
        shared_endpoints=[],
        environment={"allowed": ["APP_*", "NCCL_DEBUG"]},
    )
    with live_server(settings, InstantProvider()) as live, live.client() as http:
        allowed = http.post(BASE, json={"name": "a", "config": config(NCCL_DEBUG="INFO")})
        refused = http.post(BASE, json={"name": "b", "config": config(NCCL_SOCKET_IFNAME="lo")})
    assert allowed.status_code == 200, allowed.text
    assert refused.status_code == 400


def _specs(provider: InstantProvider) -> list[Any]:
    return [app["spec"] for app in provider.apps.values()]


def _wait_deployed(provider: InstantProvider) -> Any:
    wait_for(lambda: provider.apps, timeout=30, what="a deployment")
    return _specs(provider)[0]
