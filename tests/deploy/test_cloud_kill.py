"""The control plane SIGKILLed between two cloud calls of a node group's creation (after the
launch template, before or after the Auto Scaling group): once a new process takes over,
there is exactly one group (and one template) for the served entity, and deleting the
endpoint leaves nothing tagged with the installation. Real `moeserve run` processes attached
to the session's Ray; AWS is a real `moto_server` behind a proxy that does the killing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest

from tests.control_plane.conftest import wait_for
from tests.control_plane.moeserve_process import (
    ADMIN_TOKEN,
    FAST_ENV,
    LEASE_TTL_S,
    free_port,
    moeserve_run,
)
from tests.deploy.aws_proxy import Moment, killing_proxy
from tests.deploy.moto_server import moto_server, reset

INSTALLATION = "killtest"
REGION = "us-east-1"
MOTO_AMI = "ami-12c6146b"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


def _inventory(moto_url: str) -> dict[str, list[str]]:
    ours = [{"Name": "tag:moeserve:installation", "Values": [INSTALLATION]}]
    kwargs = {"region_name": REGION, "endpoint_url": moto_url}
    ec2, autoscaling = boto3.client("ec2", **kwargs), boto3.client("autoscaling", **kwargs)
    reservations = ec2.describe_instances(
        Filters=[*ours, {"Name": "instance-state-name", "Values": ["pending", "running"]}]
    )["Reservations"]
    return {
        "groups": [
            g["AutoScalingGroupName"]
            for g in autoscaling.describe_auto_scaling_groups(Filters=ours)["AutoScalingGroups"]
        ],
        "templates": [
            t["LaunchTemplateName"]
            for t in ec2.describe_launch_templates(Filters=ours)["LaunchTemplates"]
        ],
        "instances": [i["InstanceId"] for r in reservations for i in r["Instances"]],
    }


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["before", "after"])
def test_a_kill_between_cloud_calls_leaves_one_group_and_delete_leaves_nothing(
    ray_cluster: None,
    moto_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    moment: Moment,
) -> None:
    reset(moto_url)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    with killing_proxy(moto_url) as proxy:
        clouds = {
            "installation_id": INSTALLATION,
            "sync_interval_s": 0.5,
            "aws": {"ami_ids": {REGION: MOTO_AMI}, "endpoint_url": proxy.url},
        }
        env = {
            **FAST_ENV,
            "MOESERVE_ADMIN_TOKEN": ADMIN_TOKEN,
            "MOESERVE_SHARED_ENDPOINTS": "[]",
            "MOESERVE_CLOUDS": json.dumps(clouds),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
        port = free_port()
        entity: dict[str, Any] = {
            "name": "dbrx",
            "entity_name": "dbrx-tiny",
            "entity_version": "1",
            "workload_type": "GPU_MEDIUM",
            "workload_size": "Small",
        }
        with moeserve_run(tmp_path, port, env) as first, first.client() as admin:
            workspace = admin.post(
                "/api/2.0/workspaces", json={"name": "gpu", "cloud": "aws", "region": REGION}
            ).json()
            token = admin.post(
                f"/api/2.0/workspaces/{workspace['workspace_id']}/users",
                json={"user_name": "alice", "admin": True},
            ).json()["token_value"]
            sprung = proxy.arm("CreateAutoScalingGroup", moment, first.proc.pid)
            with first.client(token) as client:
                created = client.post(
                    "/api/2.0/serving-endpoints",
                    json={"name": "gpu-ep", "config": {"served_entities": [entity]}},
                )
                assert created.status_code == 200, created.text
            assert sprung.wait(30), f"the control plane never created the group:\n{first.tail()}"
            first.proc.wait(10)
        after_kill = _inventory(moto_url)
        assert len(after_kill["templates"]) == 1
        assert len(after_kill["groups"]) == (1 if moment == "after" else 0)

        with moeserve_run(tmp_path, port, env) as second, second.client(token) as client:
            wait_for(lambda: len(_inventory(moto_url)["groups"]) == 1, 30 + LEASE_TTL_S, "a group")
            time.sleep(1.5)  # three reconcile ticks and syncs: nothing doubles
            inventory = _inventory(moto_url)
            assert len(inventory["groups"]) == len(inventory["templates"]) == 1, inventory
            assert len(inventory["instances"]) == 1
            assert proxy.actions.count("CreateAutoScalingGroup") == 1

            assert client.delete("/api/2.0/serving-endpoints/gpu-ep").status_code == 200
            wait_for(
                lambda: _inventory(moto_url) == {"groups": [], "templates": [], "instances": []},
                30,
                lambda: f"nothing left; left: {_inventory(moto_url)}\n{second.tail()}",
            )
