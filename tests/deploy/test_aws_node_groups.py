"""AWS node groups against a real `moto_server` (launch templates, Auto Scaling groups that
really launch EC2 instances, tags); capacity refusals injected with botocore event hooks,
since moto never refuses. The start-up command itself is run against the session's Ray, with
the whole control plane, in test_cloud_endpoints.py."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest

from deploy.catalog import candidates_across
from deploy.clouds import (
    CapacityError,
    CloudCredentialsError,
    NodeGroupSpec,
    ray_start_argv,
    startup_script,
)
from deploy.clouds.aws import AwsNodeGroups, AwsSettings
from tests.deploy.moto_server import failed_launch_activity, moto_server, refuse, reset

REGIONS = ["us-east-1", "us-west-2"]
INSTALLATION = "inst1"
MOTO_AMI = "ami-12c6146b"  # one of the images moto serves in every region
CAPACITY_MESSAGE = (
    "We currently do not have sufficient g6.xlarge capacity in the Availability Zone you "
    "requested (us-east-1a)."
)


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


def _session() -> Any:
    return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def settings(moto_url: str) -> AwsSettings:
    reset(moto_url)
    amis = dict.fromkeys(REGIONS, MOTO_AMI)
    return AwsSettings(installation_id=INSTALLATION, ami_ids=amis, endpoint_url=moto_url)


@pytest.fixture
def groups(settings: AwsSettings) -> AwsNodeGroups:
    return AwsNodeGroups(settings, session=_session())


def _spec(
    workload: str = "GPU_MEDIUM", count: int = 1, entity: str = "mixtral-1", **kw: Any
) -> NodeGroupSpec:
    return NodeGroupSpec(
        installation_id=INSTALLATION,
        endpoint_id=kw.pop("endpoint_id", "ep-42"),
        served_entity=entity,
        app_name=f"{entity}-v1",
        candidates=candidates_across("aws", kw.pop("regions", ["us-east-1"]), workload),
        count=count,
        head_address="10.0.0.5:6379",
        worker_image="registry.example.com/moeserve/worker:0.1.0",
        **kw,
    )


def _inventory(groups: AwsNodeGroups, region: str = "us-east-1") -> dict[str, list[Any]]:
    """Everything tagged with this installation in `region`, as AWS lists it."""
    ours = [{"Name": "tag:moeserve:installation", "Values": [INSTALLATION]}]
    ec2, autoscaling = groups.client("ec2", region), groups.client("autoscaling", region)
    reservations = ec2.describe_instances(
        Filters=[*ours, {"Name": "instance-state-name", "Values": ["pending", "running"]}]
    )["Reservations"]
    return {
        "groups": autoscaling.describe_auto_scaling_groups(Filters=ours)["AutoScalingGroups"],
        "templates": ec2.describe_launch_templates(Filters=ours)["LaunchTemplates"],
        "instances": [i for r in reservations for i in r["Instances"]],
    }


def test_ensure_creates_one_group_of_the_catalog_shape_with_counts_and_tags(groups):
    spec = _spec(count=2, max_count=4)
    expected = candidates_across("aws", ["us-east-1"], "GPU_MEDIUM")[0].name

    group = groups.ensure(spec)

    assert (group.name, group.region, group.instance_type) == (spec.name, "us-east-1", expected)
    assert (group.desired, group.running, group.failures) == (2, 2, ())
    inventory = _inventory(groups)
    [asg] = inventory["groups"]
    assert (asg["MinSize"], asg["MaxSize"], asg["DesiredCapacity"]) == (0, 4, 2)
    tags = {t["Key"]: (t["Value"], t["PropagateAtLaunch"]) for t in asg["Tags"]}
    assert tags["moeserve:endpoint-id"] == ("ep-42", True)
    assert tags["moeserve:served-entity"] == ("mixtral-1", True)
    [template] = inventory["templates"]
    assert template["LaunchTemplateName"] == f"{spec.name}-{expected}"
    data = groups.client("ec2", "us-east-1").describe_launch_template_versions(
        LaunchTemplateName=template["LaunchTemplateName"], Versions=["$Latest"]
    )["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    assert base64.b64decode(data["UserData"]).decode() == startup_script(spec)
    assert {i["InstanceType"] for i in inventory["instances"]} == {expected}
    assert len(inventory["instances"]) == 2


def test_ensure_again_and_from_a_fresh_provider_changes_nothing(groups, settings):
    first = groups.ensure(_spec())
    before = _inventory(groups)

    again = groups.ensure(_spec())
    restarted = AwsNodeGroups(settings, session=_session()).ensure(_spec())

    after = _inventory(groups)
    assert again == first and restarted == first
    assert len(after["groups"]) == len(after["templates"]) == len(after["instances"]) == 1
    assert after["instances"][0]["InstanceId"] == before["instances"][0]["InstanceId"]


class _Killed(BaseException):
    """The control plane dies mid-ensure (not an Exception: nothing may catch it)."""


@pytest.mark.parametrize(
    "killed_at",
    [
        "before-call.auto-scaling.CreateAutoScalingGroup",  # template made, group not yet
        "after-call.auto-scaling.CreateAutoScalingGroup",  # group made, never heard of
    ],
)
def test_a_restart_after_a_kill_between_cloud_calls_leaves_one_group(groups, settings, killed_at):
    def die(**_: Any) -> None:
        raise _Killed

    groups.client("autoscaling", "us-east-1").meta.events.register(killed_at, die)
    with pytest.raises(_Killed):
        groups.ensure(_spec())

    restarted = AwsNodeGroups(settings, session=_session())
    group = restarted.ensure(_spec())

    inventory = _inventory(groups)
    assert len(inventory["groups"]) == len(inventory["templates"]) == 1
    assert (group.desired, len(inventory["instances"])) == (1, 1)
    restarted.release(group.name)
    assert _inventory(groups) == {"groups": [], "templates": [], "instances": []}


def test_scale_up_then_to_zero_releases_the_instances(groups):
    name = groups.ensure(_spec(count=1)).name

    up = groups.scale(name, 3)
    assert (up.desired, up.running) == (3, 3)
    assert len(_inventory(groups)["instances"]) == 3

    down = groups.scale(name, 0)
    assert (down.desired, down.running) == (0, 0)
    inventory = _inventory(groups)
    assert inventory["instances"] == [] and len(inventory["groups"]) == 1


def test_ensure_with_a_new_count_scales_the_existing_group(groups):
    groups.ensure(_spec(count=1))
    group = groups.ensure(_spec(count=2))
    assert (group.desired, group.running) == (2, 2)
    assert len(_inventory(groups)["groups"]) == 1


def test_release_leaves_nothing_tagged_and_is_idempotent(groups):
    name = groups.ensure(_spec(count=2)).name
    groups.release(name)
    groups.release(name)
    assert _inventory(groups) == {"groups": [], "templates": [], "instances": []}
    assert groups.list_owned() == []


def test_insufficient_capacity_on_the_first_shape_fails_over_to_the_next(groups):
    shapes = [c.name for c in candidates_across("aws", ["us-east-1"], "GPU_MEDIUM")]
    refused = refuse(
        groups.client("autoscaling", "us-east-1"),
        "CreateAutoScalingGroup",
        "InsufficientInstanceCapacity",
        CAPACITY_MESSAGE,
        when=lambda body: body["LaunchTemplate.LaunchTemplateName"].endswith(shapes[0]),
    )

    group = groups.ensure(_spec())

    assert len(refused) == 1
    assert group.instance_type == shapes[1]
    [failure] = group.failures
    assert (failure.instance_type, failure.code) == (shapes[0], "InsufficientInstanceCapacity")
    assert CAPACITY_MESSAGE in group.message
    inventory = _inventory(groups)
    assert [t["LaunchTemplateName"] for t in inventory["templates"]] == [
        f"{group.name}-{shapes[1]}"
    ]
    assert {i["InstanceType"] for i in inventory["instances"]} == {shapes[1]}


def test_a_group_whose_launches_fail_for_capacity_is_replaced_by_the_next_shape(groups):
    shapes = [c.name for c in candidates_across("aws", ["us-east-1"], "GPU_MEDIUM")]
    failed_launch_activity(groups.client("autoscaling", "us-east-1"), shapes[0], CAPACITY_MESSAGE)

    group = groups.ensure(_spec())

    assert group.instance_type == shapes[1]
    assert [(f.code, f.message) for f in group.failures] == [
        ("InsufficientInstanceCapacity", CAPACITY_MESSAGE)
    ]
    assert len(_inventory(groups)["groups"]) == 1


def test_a_quota_refusal_in_one_region_fails_over_to_the_next_region(groups):
    quota = "You have requested more vCPU capacity than your current vCPU limit of 0 allows"
    refuse(groups.client("autoscaling", "us-east-1"), "CreateAutoScalingGroup",
           "VcpuLimitExceeded", quota)  # fmt: skip

    group = groups.ensure(_spec("GPU_LARGE", regions=REGIONS))

    assert (group.region, group.instance_type) == ("us-west-2", "p4de.24xlarge")
    assert group.failures[0].region == "us-east-1" and quota in group.message
    assert _inventory(groups, "us-east-1") == {"groups": [], "templates": [], "instances": []}


def test_every_shape_refused_raises_capacity_error_with_the_clouds_message(groups):
    spec = _spec("GPU_SMALL")
    refuse(groups.client("autoscaling", "us-east-1"), "CreateAutoScalingGroup",
           "InsufficientInstanceCapacity", CAPACITY_MESSAGE)  # fmt: skip

    with pytest.raises(CapacityError) as raised:
        groups.ensure(spec)

    assert [f.instance_type for f in raised.value.failures] == [c.name for c in spec.candidates]
    assert CAPACITY_MESSAGE in raised.value.cloud_message
    assert _inventory(groups) == {"groups": [], "templates": [], "instances": []}


def test_sweep_releases_what_no_endpoint_owns_and_only_this_installations(groups, settings):
    kept = groups.ensure(_spec(entity="kept")).name
    orphan = groups.ensure(_spec(entity="orphan")).name
    # A template left by a kill before its group was created.
    stray = _spec(entity="stray")

    def die(**_: Any) -> None:
        raise _Killed

    groups.client("autoscaling", "us-east-1").meta.events.register(
        "before-call.auto-scaling.CreateAutoScalingGroup", die
    )
    with pytest.raises(_Killed):
        groups.ensure(stray)
    other = AwsNodeGroups(settings.model_copy(update={"installation_id": "other"}), _session())
    foreign = other.ensure(_spec(entity="kept").model_copy(update={"installation_id": "other"}))

    released = groups.sweep_orphans({kept})

    assert released == sorted([orphan, stray.name])
    assert [g.name for g in groups.list_owned()] == [kept]
    assert len(_inventory(groups)["templates"]) == 1
    assert [g.name for g in other.list_owned()] == [foreign.name]


def test_missing_credentials_are_a_clear_error_at_start(settings, tmp_path, monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    with pytest.raises(CloudCredentialsError, match="no AWS credentials found: set AWS_"):
        AwsNodeGroups(settings).check_credentials()
    assert AwsNodeGroups(settings, session=_session()).check_credentials().startswith("arn:aws:")


def test_names_are_deterministic_and_distinct_per_entity():
    assert _spec().name == _spec().name
    assert _spec().name != _spec(entity="other").name
    assert _spec().name != _spec(endpoint_id="ep-43").name
    assert len(_spec(endpoint_id="x" * 200).name) <= 63
    assert _spec().ray_resource.startswith("moeserve-group-")
    assert _spec().ray_resource != _spec(entity="other").ray_resource


def test_the_control_plane_imports_the_clouds_without_boto3():
    code = (
        "import sys, deploy.clouds, deploy.clouds.aws; "
        "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_startup_script_pulls_only_the_image_and_runs_the_ray_start_command():
    spec = _spec()
    script = startup_script(spec)
    argv = ray_start_argv(spec.head_address, spec.ray_resource)
    assert argv[:3] == ["ray", "start", "--address=10.0.0.5:6379"]
    assert json.loads(argv[3].removeprefix("--resources=")) == {spec.ray_resource: 1}
    assert "--gpus all --network host" in script
    assert f"{spec.worker_image} ray start --address=10.0.0.5:6379 " in script
    assert not any(word in script for word in ("apt", "pip ", "curl", "wget", "yum"))


def test_a_ray_auth_token_reaches_the_node_in_a_root_only_env_file_not_a_command_line(tmp_path):
    token = 'tok\'en $1 "x"'
    script = startup_script(_spec(ray_auth_token=token))
    [run] = [line for line in script.splitlines() if line.startswith("docker run ")]
    assert "--env-file /etc/moeserve/ray-auth.env " in run and "tok" not in run
    # The lines that write the file, run for real under a scratch directory.
    writes = [ln for ln in script.splitlines() if "/etc/moeserve" in ln and "docker" not in ln]
    here = str(tmp_path / "etc-moeserve")
    subprocess.run(
        [
            "bash",
            "-euo",
            "pipefail",
            "-c",
            "\n".join(w.replace("/etc/moeserve", here) for w in writes),
        ],
        check=True,
    )
    written = Path(here, "ray-auth.env")
    assert written.read_text() == f"RAY_AUTH_MODE=token\nRAY_AUTH_TOKEN={token}\n"
    assert (written.stat().st_mode & 0o777, Path(here).stat().st_mode & 0o777) == (0o600, 0o700)
    with pytest.raises(ValueError, match="one line"):
        _spec(ray_auth_token="a\nb")
