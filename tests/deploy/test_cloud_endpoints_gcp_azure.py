"""Endpoints in GCP and Azure workspaces, end to end, the same way as on AWS
(`test_cloud_endpoints.py`), with the clouds' real SDKs talking to the fake servers under
tests/deploy/: a capacity refusal of the only allowed shape fails the deployment with the
cloud's message; with a fallback shape listed the group lands there and the state message
reports the refusal; a Ray worker node started with the start-up script the cloud holds
makes the endpoint READY; `update_config` scales the group; delete leaves nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.catalog import candidates_across
from deploy.providers.cloud import CloudOptions, CloudProvider
from deploy.providers.local import LocalRayProvider
from tests.control_plane.conftest import live_server, make_settings, wait_for
from tests.deploy.cloud_doubles import CAPACITY_MESSAGE, CloudDouble, double, served_double
from tests.deploy.cloud_nodes import LocalNodes, ray_start_command
from tests.deploy.test_cloud_endpoints import ray_head_address
from workers.testing.instant import instant_engine_factory

INSTALLATION = "e2e2"


@pytest.fixture(scope="module", params=["gcp", "azure"])
def served(request: pytest.FixtureRequest) -> Iterator[CloudDouble]:
    with served_double(request.param) as fake:
        yield double(request.param, fake)


@pytest.fixture
def cloud(served: CloudDouble) -> CloudDouble:
    served.reset()
    return served


def _entity(instance_types: list[str], size: str = "Small") -> dict[str, Any]:
    return {
        "name": "dbrx",
        "entity_name": "dbrx-tiny",
        "entity_version": "1",
        "workload_type": "GPU_MEDIUM",
        "workload_size": size,
        "placement": {"instance_types": instance_types},
    }


@pytest.mark.slow
def test_an_endpoint_fails_over_runs_scales_and_is_released_on_gcp_and_azure(
    ray_cluster: None, cloud: CloudDouble, tmp_path: Path
) -> None:
    shapes = [c.name for c in candidates_across(cloud.cloud, [cloud.region], "GPU_MEDIUM")]
    settings = make_settings(
        f"sqlite:///{tmp_path / 'moeserve.db'}",
        tmp_path,
        shared_endpoints=[],
        workers={"concurrency_per_replica": 8},
        clouds={"installation_id": INSTALLATION, cloud.cloud: cloud.section(INSTALLATION)},
    )
    provider = CloudProvider(
        LocalRayProvider(engine_factory=instant_engine_factory),
        {cloud.cloud: cloud.node_groups(INSTALLATION)},
        CloudOptions(INSTALLATION, "moeserve/worker:0.1.0", ray_head_address, 0.5),
    )
    cloud.refuse(shapes[0])
    nodes = LocalNodes(tmp_path)
    with live_server(settings, provider) as server:
        admin = server.client()
        workspace = admin.post(
            "/api/2.0/workspaces",
            json={"name": "gpu", "cloud": cloud.cloud, "region": cloud.region},
        ).json()
        token = admin.post(
            f"/api/2.0/workspaces/{workspace['workspace_id']}/users",
            json={"user_name": "alice", "admin": True},
        ).json()["token_value"]
        client = server.client(token)

        def state(name: str) -> dict[str, Any]:
            body = client.get(f"/api/2.0/serving-endpoints/{name}").json()
            config = body.get("pending_config") or body["config"]
            return {**body["state"], **config["served_entities"][0]["state"]}

        # Only the refused shape: DEPLOYMENT_FAILED with the cloud's own words.
        created = client.post(
            "/api/2.0/serving-endpoints",
            json={"name": "pinned", "config": {"served_entities": [_entity([shapes[0]])]}},
        )
        assert created.status_code == 200, created.text
        failed = wait_for(
            lambda: (s := state("pinned"))["deployment"] == "DEPLOYMENT_FAILED" and s,
            30,
            lambda: f"DEPLOYMENT_FAILED; last: {state('pinned')}",
        )
        assert CAPACITY_MESSAGE in failed["deployment_state_message"]
        assert failed["config_update"] == "UPDATE_FAILED" and cloud.groups() == []
        client.delete("/api/2.0/serving-endpoints/pinned")

        # A fallback shape: the group lands there, and the message says what was refused.
        created = client.post(
            "/api/2.0/serving-endpoints",
            json={"name": "gpu", "config": {"served_entities": [_entity(shapes[:2])]}},
        )
        assert created.status_code == 200, created.text
        [group] = wait_for(cloud.groups, 30, "a group")
        assert (group.instance_type, group.target) == (shapes[1], 1)
        message = wait_for(
            lambda: CAPACITY_MESSAGE in (m := state("gpu")["deployment_state_message"]) and m,
            30,
            "the refusal in the state message",
        )
        assert f"{shapes[1]} in {cloud.region}" in message
        try:
            command = ray_start_command(cloud.startup_script(group.name))
            assert command[:3] == ["ray", "start", f"--address={ray_head_address()}"]
            nodes.start(command)
            wait_for(
                lambda: state("gpu")["ready"] == "READY",
                90,
                lambda: f"READY; last: {state('gpu')}",
            )
            answer = client.post(
                "/serving-endpoints/gpu/invocations",
                json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            )
            assert answer.status_code == 200, answer.text

            updated = client.put(
                "/api/2.0/serving-endpoints/gpu/config",
                json={"served_entities": [_entity(shapes[:2], "Medium")]},
            )
            assert updated.status_code == 200, updated.text
            wait_for(
                lambda: [(g.target, g.instances) for g in cloud.groups()] == [(3, 3)],
                30,
                lambda: f"the group at 1 + 2 nodes; last: {cloud.groups()}",
            )

            client.delete("/api/2.0/serving-endpoints/gpu")
            wait_for(
                lambda: not any(cloud.leftovers().values()),
                30,
                lambda: f"nothing left; left: {cloud.leftovers()}",
            )
        finally:
            nodes.stop()
