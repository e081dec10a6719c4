"""Endpoints in a cloud workspace, end to end: the control plane (real app, real reconciler,
the session's Ray, the instant engine) provisions the served entity's node group on AWS
(a real `moto_server`), Ray worker nodes started with the group's own start-up command make
its replicas schedule, `update_config` scales the group, delete releases everything, and a
capacity refusal fails the deployment with AWS's message, then a fallback shape serves."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import httpx
import pytest
import ray
from databricks.sdk import WorkspaceClient
from databricks.sdk.service.serving import (
    EndpointCoreConfigInput,
    ServedEntityInput,
    ServingModelWorkloadType,
)

from control_plane.app import cloud_provider
from deploy.catalog import candidates_across
from deploy.clouds.aws import AwsNodeGroups
from deploy.clouds.base import node_resource
from deploy.providers.cloud import CloudProvider
from deploy.providers.local import LocalRayProvider
from tests.control_plane.conftest import LiveServer, live_server, make_settings, wait_for
from tests.deploy.cloud_nodes import LocalNodes, ray_start_command
from tests.deploy.moto_server import moto_server, refuse, reset
from workers.testing.instant import instant_engine_factory

INSTALLATION = "e2e"
MOTO_AMI = "ami-12c6146b"
REGION = "us-east-1"
SHAPES = [c.name for c in candidates_across("aws", [REGION], "GPU_MEDIUM")]
CAPACITY_MESSAGE = (
    f"We currently do not have sufficient {SHAPES[0]} capacity in the Availability Zone you "
    "requested (us-east-1a). Our system will be working on provisioning additional capacity."
)


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    reset(moto_url)
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return moto_url


def _server(
    aws_url: str, tmp_path: Path
) -> tuple[contextlib.AbstractContextManager[LiveServer], CloudProvider]:
    settings = make_settings(
        f"sqlite:///{tmp_path / 'moeserve.db'}",
        tmp_path,
        shared_endpoints=[],
        # Small = 1 replica, Medium = 2: small enough for worker nodes on a 2-core machine.
        workers={"concurrency_per_replica": 8},
        retire_grace_s=1,
        # One process: a short lease makes its groups' release grace short (2 × (1.5 + 0.2) s).
        lease_ttl_s=1.5,
        gateway={"lookup_cache_ttl_s": 0.5},
        clouds={
            "installation_id": INSTALLATION,
            "sync_interval_s": 0.5,
            "aws": {"ami_ids": {REGION: MOTO_AMI}, "endpoint_url": aws_url},
        },
    )
    provider = cloud_provider(settings, LocalRayProvider(engine_factory=instant_engine_factory))
    assert isinstance(provider, CloudProvider)
    return live_server(settings, provider), provider


def _aws_workspace(server: LiveServer) -> tuple[dict[str, Any], str]:
    """An `aws` workspace and its admin's token."""
    admin = server.client()
    created = admin.post(
        "/api/2.0/workspaces", json={"name": "gpu", "cloud": "aws", "region": REGION}
    )
    assert created.status_code == 200, created.text
    workspace = created.json()
    user = admin.post(
        f"/api/2.0/workspaces/{workspace['workspace_id']}/users",
        json={"user_name": "alice", "admin": True},
    )
    assert user.status_code == 200, user.text
    return workspace, str(user.json()["token_value"])


def _inventory(aws_url: str) -> dict[str, list[Any]]:
    """Everything tagged with this installation, as AWS lists it."""
    ours = [{"Name": "tag:moeserve:installation", "Values": [INSTALLATION]}]
    kwargs = {"region_name": REGION, "endpoint_url": aws_url}
    ec2, autoscaling = boto3.client("ec2", **kwargs), boto3.client("autoscaling", **kwargs)
    reservations = ec2.describe_instances(
        Filters=[*ours, {"Name": "instance-state-name", "Values": ["pending", "running"]}]
    )["Reservations"]
    return {
        "groups": autoscaling.describe_auto_scaling_groups(Filters=ours)["AutoScalingGroups"],
        "templates": ec2.describe_launch_templates(Filters=ours)["LaunchTemplates"],
        "instances": [i for r in reservations for i in r["Instances"]],
    }


def _user_data(aws_url: str, template: str) -> str:
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=aws_url)
    data = ec2.describe_launch_template_versions(LaunchTemplateName=template, Versions=["$Latest"])[
        "LaunchTemplateVersions"
    ][0]["LaunchTemplateData"]
    return base64.b64decode(data["UserData"]).decode()


def _entity(client: httpx.Client, endpoint: str) -> dict[str, Any]:
    body = client.get(f"/api/2.0/serving-endpoints/{endpoint}").json()
    config = body.get("pending_config") or body.get("config")
    entity: dict[str, Any] = config["served_entities"][0]
    entity["_endpoint"] = body
    return entity


def _one_group(aws_url: str, desired: int | None = None) -> dict[str, Any] | None:
    groups = _inventory(aws_url)["groups"]
    if len(groups) != 1:
        return None
    if desired is not None and groups[0]["DesiredCapacity"] != desired:
        return None
    group: dict[str, Any] = groups[0]
    return group


@pytest.mark.slow
def test_an_endpoint_in_an_aws_workspace_runs_scales_and_is_released_on_its_node_group(
    ray_cluster: None, aws: str, tmp_path: Path
) -> None:
    serving, _ = _server(aws, tmp_path)
    nodes = LocalNodes(tmp_path)
    with serving as server:
        workspace, token = _aws_workspace(server)
        assert (workspace["cloud"], workspace["region"]) == ("aws", REGION)
        sdk = WorkspaceClient(host=server.url, token=token)
        client = server.client(token)
        sdk.serving_endpoints.create(
            name="dbrx-gpu",
            config=EndpointCoreConfigInput(
                name="dbrx-gpu",
                served_entities=[
                    ServedEntityInput(
                        name="dbrx",
                        entity_name="dbrx-tiny",
                        entity_version="1",
                        workload_type=ServingModelWorkloadType.GPU_MEDIUM,
                        workload_size="Small",
                    )
                ],
            ),
        )
        endpoint_id = client.get("/api/2.0/serving-endpoints/dbrx-gpu").json()["id"]
        try:
            # The group: the catalog's cheapest GPU_MEDIUM shape in the region, one node.
            group = wait_for(lambda: _one_group(aws, 1), 30, "one group of 1 node")
            tags = {t["Key"]: t["Value"] for t in group["Tags"]}
            assert tags["moeserve:instance-type"] == SHAPES[0]
            assert (tags["moeserve:endpoint-id"], tags["moeserve:served-entity"]) == (
                endpoint_id,
                "dbrx",
            )
            assert (group["MinSize"], group["DesiredCapacity"]) == (0, 1)
            [template] = _inventory(aws)["templates"]
            waiting = wait_for(
                lambda: (
                    "waiting for 1 node(s)"
                    in _entity(client, "dbrx-gpu")["state"].get("deployment_state_message", "")
                ),
                30,
                "the entity to say it waits for its node",
            )
            assert waiting

            # A machine of the group boots: the start-up command joins it to the cluster.
            command = ray_start_command(_user_data(aws, template["LaunchTemplateName"]))
            assert command[:3] == ["ray", "start", f"--address={ray_head_address()}"]
            node = nodes.start(command)
            wait_for(
                lambda: (
                    client.get("/api/2.0/serving-endpoints/dbrx-gpu").json()["state"]["ready"]
                    == "READY"
                ),
                90,
                lambda: f"READY; last: {_entity(client, 'dbrx-gpu')['state']}",
            )
            resource = node_resource(group["AutoScalingGroupName"])
            assert _held_on(node, resource) == 1  # the replica holds the node's group resource
            assert SHAPES[0] in _entity(client, "dbrx-gpu")["state"]["deployment_state_message"]
            answer = client.post(
                "/serving-endpoints/dbrx-gpu/invocations",
                json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            )
            assert answer.status_code == 200, answer.text

            # update_config: Medium = 2 replicas; during the roll old and new share the group.
            sdk.serving_endpoints.update_config(
                name="dbrx-gpu",
                served_entities=[
                    ServedEntityInput(
                        name="dbrx",
                        entity_name="dbrx-tiny",
                        entity_version="1",
                        workload_type=ServingModelWorkloadType.GPU_MEDIUM,
                        workload_size="Medium",
                    )
                ],
            )
            wait_for(lambda: _one_group(aws, 3), 30, "the group scaled to 1 + 2 nodes")
            for _ in range(2):
                nodes.start(command)
            wait_for(
                lambda: (
                    client.get("/api/2.0/serving-endpoints/dbrx-gpu").json()["state"]
                    == {"ready": "READY", "config_update": "NOT_UPDATING"}
                ),
                120,
                lambda: f"the update to finish; last: {_entity(client, 'dbrx-gpu')['state']}",
            )
            wait_for(lambda: _one_group(aws, 2), 30, "the group down to the new app's 2 nodes")
            assert len(_inventory(aws)["instances"]) == 2

            # Delete: the app goes, then its group, template and instances.
            sdk.serving_endpoints.delete("dbrx-gpu")
            wait_for(
                lambda: _inventory(aws) == {"groups": [], "templates": [], "instances": []},
                30,
                lambda: f"nothing left; left: {_inventory(aws)}",
            )
        finally:
            nodes.stop()


@pytest.mark.slow
def test_a_capacity_refusal_fails_the_deployment_then_a_fallback_shape_serves(
    ray_cluster: None, aws: str, tmp_path: Path
) -> None:
    serving, provider = _server(aws, tmp_path)
    with serving as server:
        _, token = _aws_workspace(server)
        client = server.client(token)
        groups = provider.clouds["aws"]
        assert isinstance(groups, AwsNodeGroups)
        autoscaling = groups.client("autoscaling", REGION)
        refused = refuse(
            autoscaling,
            "CreateAutoScalingGroup",
            "InsufficientInstanceCapacity",
            CAPACITY_MESSAGE,
            when=lambda body: body["LaunchTemplate.LaunchTemplateName"].endswith(SHAPES[0]),
        )

        def entity(instance_types: list[str]) -> dict[str, Any]:
            return {
                "name": "dbrx",
                "entity_name": "dbrx-tiny",
                "entity_version": "1",
                "workload_type": "GPU_MEDIUM",
                "workload_size": "Small",
                "placement": {"instance_types": instance_types},
            }

        # Only the refused shape allowed: DEPLOYMENT_FAILED with AWS's own words.
        created = client.post(
            "/api/2.0/serving-endpoints",
            json={"name": "pinned", "config": {"served_entities": [entity([SHAPES[0]])]}},
        )
        assert created.status_code == 200, created.text
        failed = wait_for(
            lambda: (
                (e := _entity(client, "pinned"))["state"]["deployment"] == "DEPLOYMENT_FAILED" and e
            ),
            30,
            lambda: f"DEPLOYMENT_FAILED; last: {_entity(client, 'pinned')['state']}",
        )
        assert CAPACITY_MESSAGE in failed["state"]["deployment_state_message"]
        assert "InsufficientInstanceCapacity" in failed["state"]["deployment_state_message"]
        assert failed["_endpoint"]["state"]["config_update"] == "UPDATE_FAILED"
        assert refused and _inventory(aws)["groups"] == []

        # With a fallback shape listed, the update lands there and says what was refused.
        updated = client.put(
            "/api/2.0/serving-endpoints/pinned/config",
            json={"served_entities": [entity([SHAPES[0], SHAPES[1]])]},
        )
        assert updated.status_code == 200, updated.text
        group = wait_for(lambda: _one_group(aws, 1), 30, "the fallback group")
        tags = {t["Key"]: t["Value"] for t in group["Tags"]}
        assert tags["moeserve:instance-type"] == SHAPES[1]
        message = wait_for(
            lambda: (
                CAPACITY_MESSAGE
                in (m := _entity(client, "pinned")["state"].get("deployment_state_message", ""))
                and m
            ),
            30,
            "the state message to report the refused shape",
        )
        assert f"{SHAPES[1]} in {REGION}" in message

        # A shape the region does not offer is a 400 before any cloud call.
        calls_before = len(refused)
        bad = client.post(
            "/api/2.0/serving-endpoints",
            json={
                "name": "bad",
                "config": {"served_entities": [entity(["p5.48xlarge-nonexistent"])]},
            },
        )
        assert bad.status_code == 400, bad.text
        assert "p5.48xlarge-nonexistent" in bad.json()["message"]
        assert len(refused) == calls_before
        assert client.get("/api/2.0/serving-endpoints/bad").status_code == 404

        client.delete("/api/2.0/serving-endpoints/pinned")
        wait_for(
            lambda: _inventory(aws) == {"groups": [], "templates": [], "instances": []},
            30,
            lambda: f"nothing left; left: {_inventory(aws)}",
        )


def ray_head_address() -> str:
    return str(ray.get_runtime_context().gcs_address)


def _held_on(node_id: str, resource: str) -> float:
    """How much of `resource` is held (total minus available) on node `node_id`."""
    total = next(n["Resources"] for n in ray.nodes() if n["NodeID"] == node_id).get(resource, 0)
    available = ray._private.state.available_resources_per_node().get(node_id, {})
    return float(total - available.get(resource, 0))


def test_the_workspace_cloud_must_be_configured_and_the_region_known(
    aws: str, tmp_path: Path
) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'm.db'}", tmp_path, shared_endpoints=[])
    from tests.control_plane.fake_provider import InstantProvider

    with live_server(settings, InstantProvider()) as server:
        admin = server.client()
        unconfigured = admin.post("/api/2.0/workspaces", json={"name": "a", "cloud": "gcp"})
        assert unconfigured.status_code == 400
        assert "cloud 'gcp' is not configured" in unconfigured.json()["message"]
        local = admin.post("/api/2.0/workspaces", json={"name": "b"})
        assert (local.json()["cloud"], local.json()["region"]) == ("local", "local")
        wrong = admin.post(
            "/api/2.0/workspaces", json={"name": "c", "cloud": "local", "region": "us-east-1"}
        )
        assert wrong.status_code == 400 and "not a local region" in wrong.json()["message"]
