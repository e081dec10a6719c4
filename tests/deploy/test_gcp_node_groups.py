"""GCP node groups through the real `google-cloud-compute` SDK (REST) against `gcp_fake`, where
capacity and quota refusals, lost answers and rejected credentials are injected."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials

from deploy.catalog import candidates_across
from deploy.clouds import (
    CapacityError,
    CloudCredentialsError,
    NodeGroupError,
    NodeGroupNotFound,
    NodeGroupSpec,
    ShapeNotOffered,
    startup_script,
)
from deploy.clouds.gcp import GcpNodeGroups, GcpSettings
from deploy.clouds.gcp_failures import failure_from_instance_errors
from tests.deploy.gcp_fake import GcpFake, gcp_fake

REGIONS = ["us-central1", "europe-west4"]
INSTALLATION = "inst1"
PROJECT = "moeserve-test"
IMAGE = "projects/moeserve-images/global/images/moeserve-worker-v1"
CAPACITY_MESSAGE = (
    "The zone 'projects/moeserve-test/zones/us-central1-a' does not have enough resources "
    "available to fulfill the request.  '(resource type:compute)'."
)
REPO = Path(__file__).resolve().parents[2]
ZONES = ["us-central1-a", "us-central1-b", "us-central1-c"]  # where the L4s are
QUOTA_REFUSALS = [("instances", "QUOTA_EXCEEDED"), ("answer", "quotaExceeded")]  # later, at once
SHAPES = [c.name for c in candidates_across("gcp", ["us-central1"], "GPU_MEDIUM")]


@pytest.fixture(scope="module")
def served() -> Iterator[GcpFake]:
    with gcp_fake(PROJECT) as fake:
        yield fake


@pytest.fixture
def fake(served: GcpFake) -> GcpFake:
    served.reset()
    return served


@pytest.fixture
def settings(fake: GcpFake) -> GcpSettings:
    images, zones = dict.fromkeys(REGIONS, IMAGE), {"us-central1": tuple(ZONES)}
    where: dict[str, Any] = {"installation_id": INSTALLATION, "project": PROJECT}
    return GcpSettings(**where, images=images, zones=zones, api_endpoint=fake.url)


def _provider(settings: GcpSettings) -> GcpNodeGroups:
    return GcpNodeGroups(settings, credentials=AnonymousCredentials())


@pytest.fixture
def groups(settings: GcpSettings) -> GcpNodeGroups:
    return _provider(settings)


def _spec(
    workload: str = "GPU_MEDIUM", count: int = 1, entity: str = "mixtral-1", **kw: Any
) -> NodeGroupSpec:
    return NodeGroupSpec(
        installation_id=kw.pop("installation_id", INSTALLATION),
        endpoint_id=kw.pop("endpoint_id", "ep-42"),
        served_entity=entity,
        app_name=f"{entity}-v1",
        candidates=candidates_across("gcp", kw.pop("regions", ["us-central1"]), workload),
        count=count,
        head_address="10.0.0.5:6379",
        worker_image="registry.example.com/moeserve/worker:0.1.0",
        **kw,
    )


def _inventory(
    groups: GcpNodeGroups, region: str = "us-central1", installation: str = INSTALLATION
) -> dict[str, list[Any]]:
    """What GCP lists of `installation` in `region` (the tests' endpoint ids start with
    "ep-"), and the instances that run."""
    at = {"project": PROJECT, "region": region}
    ours = {**at, "filter": f'name eq "moeserve-{installation}-ep-.*"'}
    found = {kind: list(groups.client(kind).list(request=ours)) for kind in ("groups", "templates")}
    listed = groups.client("groups").list_managed_instances
    pagers = [listed(request={**at, "instance_group_manager": m.name}) for m in found["groups"]]
    running = [i for pager in pagers for i in pager if i.instance_status == "RUNNING"]
    return {**found, "instances": running}


EMPTY: dict[str, list[Any]] = {"groups": [], "templates": [], "instances": []}


def test_ensure_creates_one_group_of_the_catalog_shape_with_counts_and_labels(groups, fake):
    spec = _spec(count=2, max_count=4)
    fake.polls_until_done = 2  # every operation is RUNNING at the first poll
    expected = SHAPES[0]

    group = groups.ensure(spec)

    assert (group.name, group.region, group.instance_type) == (spec.name, "us-central1", expected)
    assert (group.desired, group.running, group.failures) == (2, 2, ())
    assert group.tags == {**spec.tags, "moeserve:instance-type": expected}
    inventory = _inventory(groups)
    [mig], [template] = inventory["groups"], inventory["templates"]
    assert (mig.name, mig.target_size, mig.instance_template) == (spec.name, 2, template.self_link)
    policy = mig.distribution_policy
    assert policy.target_shape == "ANY" and [z.zone.split("/")[1] for z in policy.zones] == ZONES
    assert template.name.startswith(spec.name[:50]) and len(template.name) <= 63
    properties = template.properties
    assert properties.machine_type == expected
    assert not properties.guest_accelerators  # a2/a3/g2 come with their GPUs
    assert properties.scheduling.on_host_maintenance == "TERMINATE"
    metadata = {item.key: item.value for item in properties.metadata.items}
    assert metadata == {"startup-script": startup_script(spec)}
    assert properties.disks[0].initialize_params.source_image == IMAGE
    labels = {"installation": INSTALLATION, "endpoint-id": "ep-42", "served-entity": "mixtral-1"}
    labels |= {"node-group": spec.name, "machine-type": expected}
    assert dict(properties.labels) == {f"moeserve-{k}": v for k, v in labels.items()}
    assert len(inventory["instances"]) == 2
    polls = Counter(r.path for r in fake.requests if "/operations/" in r.path)
    assert sorted(polls.values()) == [2, 2]  # the template's and the group's insert


def test_ensure_again_and_from_a_fresh_provider_changes_nothing(groups, settings, fake):
    first = groups.ensure(_spec())
    before = _inventory(groups)
    changes = len(fake.mutations())

    again = groups.ensure(_spec())
    restarted = _provider(settings).ensure(_spec())

    after = _inventory(groups)
    assert again == first and restarted == first
    assert len(fake.mutations()) == changes
    assert len(after["groups"]) == len(after["templates"]) == len(after["instances"]) == 1
    assert after["instances"][0].id == before["instances"][0].id


class _Killed(BaseException):
    """The control plane dies mid-ensure (not an Exception: nothing may catch it)."""


def _kill_at_group_insert(groups: GcpNodeGroups, monkeypatch, after_the_call: bool) -> None:
    insert = groups.client("groups").insert_unary

    def die(*args: Any, **kwargs: Any) -> Any:
        if after_the_call:
            insert(*args, **kwargs)
        raise _Killed

    monkeypatch.setattr(groups.client("groups"), "insert_unary", die)


KILLED_AT = {"template made, group not yet": False, "group made, never heard of": True}


@pytest.mark.parametrize("after_the_call", KILLED_AT.values(), ids=KILLED_AT.keys())
def test_a_restart_after_a_kill_between_cloud_calls_leaves_one_group(
    groups, settings, monkeypatch, after_the_call
):
    _kill_at_group_insert(groups, monkeypatch, after_the_call)
    with pytest.raises(_Killed):
        groups.ensure(_spec())

    restarted = _provider(settings)
    group = restarted.ensure(_spec())

    inventory = _inventory(groups)
    assert len(inventory["groups"]) == len(inventory["templates"]) == 1
    assert (group.desired, len(inventory["instances"])) == (1, 1)
    restarted.release(group.name)
    assert _inventory(groups) == EMPTY


def test_scale_up_then_to_zero_releases_the_instances(groups):
    name = groups.ensure(_spec(count=1)).name

    up = groups.scale(name, 3)
    assert (up.desired, up.running) == (3, 3)
    assert len(_inventory(groups)["instances"]) == 3

    down = groups.scale(name, 0)
    assert (down.desired, down.running) == (0, 0)
    inventory = _inventory(groups)
    assert inventory["instances"] == [] and len(inventory["groups"]) == 1

    # 1 → 3 again: the very request of the first scale-up, which GCP would de-duplicate.
    assert groups.scale(name, 1).running == 1
    assert groups.scale(name, 3).running == 3
    with pytest.raises(NodeGroupNotFound):
        groups.scale("moeserve-inst1-nothing-0000000000", 1)


def test_ensure_with_a_new_count_scales_the_existing_group(groups):
    groups.ensure(_spec(count=1))
    group = groups.ensure(_spec(count=2))
    assert (group.desired, group.running) == (2, 2)
    assert len(_inventory(groups)["groups"]) == 1


def test_release_leaves_nothing_and_is_idempotent(groups):
    name = groups.ensure(_spec(count=2)).name
    groups.release(name)
    groups.release(name)
    assert _inventory(groups) == EMPTY
    assert groups.list_owned() == []


def test_ensure_after_a_release_creates_the_group_anew(groups, fake):
    """GCP answers the new life's template insert (same request id) with the first's operation."""
    name = groups.ensure(_spec()).name
    groups.release(name)

    group = groups.ensure(_spec())

    assert (group.name, group.running) == (name, 1)
    inventory = _inventory(groups)
    assert len(inventory["groups"]) == len(inventory["templates"]) == 1
    inserts = [r for r in fake.requests if r.method == "POST" and r.path.endswith("Templates")]
    first, repeated, anew = (r.query["requestId"] for r in inserts)
    assert first == repeated != anew  # the repeat was answered with the first life's operation


def test_insufficient_capacity_on_the_first_shape_fails_over_to_the_next(groups, fake):
    fake.refuse(SHAPES[0], "ZONE_RESOURCE_POOL_EXHAUSTED", CAPACITY_MESSAGE)

    group = groups.ensure(_spec())

    assert group.instance_type == SHAPES[1]
    [failure] = group.failures
    assert (failure.instance_type, failure.code) == (SHAPES[0], "ZONE_RESOURCE_POOL_EXHAUSTED")
    assert CAPACITY_MESSAGE in group.message
    inventory = _inventory(groups)
    [template] = inventory["templates"]
    assert template.properties.machine_type == SHAPES[1]
    assert len(inventory["groups"]) == len(inventory["instances"]) == 1


def test_a_group_whose_instances_fail_for_capacity_is_replaced_by_the_next_shape(groups, fake):
    code = "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"
    fake.refuse(SHAPES[0], code, CAPACITY_MESSAGE, stage="instances")

    group = groups.ensure(_spec())

    assert (group.instance_type, group.running) == (SHAPES[1], 1)
    assert [(f.code, f.message) for f in group.failures] == [(code, CAPACITY_MESSAGE)]
    inventory = _inventory(groups)
    assert len(inventory["groups"]) == len(inventory["templates"]) == 1


@pytest.mark.parametrize("stage, code", QUOTA_REFUSALS)
def test_a_quota_refusal_in_one_region_fails_over_to_the_next_region(groups, fake, stage, code):
    quota = "Quota 'NVIDIA_A100_80GB_GPUS' exceeded.  Limit: 0.0 in region us-central1."
    fake.refuse(lambda _: True, code, quota, stage=stage, region="us-central1")

    group = groups.ensure(_spec("GPU_LARGE", regions=REGIONS))

    assert (group.region, group.instance_type) == ("europe-west4", "a2-ultragpu-1g")
    assert {(f.region, f.code) for f in group.failures} == {("us-central1", code)}
    assert len(group.failures) == 4 and quota in group.message
    assert _inventory(groups, "us-central1") == EMPTY


def test_every_shape_refused_raises_capacity_error_with_the_clouds_message(groups, fake):
    spec = _spec()
    fake.refuse(lambda _: True, "ZONE_RESOURCE_POOL_EXHAUSTED", CAPACITY_MESSAGE)

    with pytest.raises(CapacityError) as raised:
        groups.ensure(spec)

    assert [f.instance_type for f in raised.value.failures] == [c.name for c in spec.candidates]
    assert CAPACITY_MESSAGE in raised.value.cloud_message
    assert _inventory(groups) == EMPTY


def test_a_refused_scale_up_says_why_and_leaves_the_group_as_it_was(groups, fake):
    group = groups.ensure(_spec(count=1))
    quota = "Quota 'NVIDIA_L4_GPUS' exceeded.  Limit: 1.0 in region us-central1."
    fake.refuse(group.instance_type, "QUOTA_EXCEEDED", quota, stage="resize")

    with pytest.raises(NodeGroupError, match="NVIDIA_L4_GPUS"):
        groups.scale(group.name, 4)

    assert groups.list_owned() == [group]


def test_sweep_releases_what_no_endpoint_owns_and_only_this_installations(
    groups, settings, monkeypatch
):
    kept = groups.ensure(_spec(entity="kept")).name
    orphan = groups.ensure(_spec(entity="orphan")).name
    stray = _spec(entity="stray")  # a template left by a kill before its group was created
    with monkeypatch.context() as patched:
        _kill_at_group_insert(groups, patched, after_the_call=False)
        with pytest.raises(_Killed):
            groups.ensure(stray)
    # An installation whose id starts with ours: its names start with ours too.
    other = _provider(settings.model_copy(update={"installation_id": "inst1-b"}))
    foreign = other.ensure(_spec(entity="kept", installation_id="inst1-b"))

    released = groups.sweep_orphans({kept})

    assert released == sorted([orphan, stray.name])
    assert [g.name for g in groups.list_owned()] == [kept]
    assert len(_inventory(groups)["templates"]) == 1
    assert [g.name for g in other.list_owned()] == [foreign.name]
    assert len(_inventory(groups, installation="inst1-b")["templates"]) == 1


def test_a_retried_insert_carries_the_same_request_id_and_has_one_effect(groups, fake):
    fake.fail_once("POST", "/instanceGroupManagers")  # done, but the answer is lost

    group = groups.ensure(_spec())

    inserts = [
        r for r in fake.requests if r.method == "POST" and r.path.endswith("instanceGroupManagers")
    ]
    assert len(inserts) == 2 and inserts[0].query["requestId"] == inserts[1].query["requestId"]
    assert inserts[0].body == inserts[1].body
    assert (group.desired, group.running) == (1, 1)
    assert len(_inventory(groups)["groups"]) == 1


def test_labels_are_sanitized_and_the_exact_tags_kept(groups):
    entity = "Mixtral-8x7B: Instruct/v0.1 " + "x" * 80

    group = groups.ensure(_spec(entity=entity))  # the fake refuses invalid labels

    assert group.tags["moeserve:served-entity"] == entity
    [template] = _inventory(groups)["templates"]
    label = template.properties.labels["moeserve-served-entity"]
    assert len(label) <= 63 and label.startswith("mixtral-8x7b-instruct-v0-1-")


def test_only_a_recent_capacity_error_explains_a_group_without_instances():
    created, now = "2024-06-01T11:50:00.000-07:00", datetime(2024, 6, 1, 19, tzinfo=UTC).timestamp()

    def failure(at: str) -> str | None:
        errors = [{"code": "QUOTA_EXCEEDED", "message": "no", "timestamp": at}]
        found = failure_from_instance_errors(errors, created, "us-central1", "g2-standard-4", now)
        return None if found is None else found.code

    assert failure("2024-06-01T11:40:00.000-07:00") is None  # older than the window
    assert failure("2024-06-01T11:49:00.000-07:00") is None  # before the group was created
    assert failure("2024-06-01T18:55:00.000Z") == "QUOTA_EXCEEDED"  # 11:55 in the zone's time


def test_a_region_without_an_image_is_refused_before_any_call(groups, fake):
    with pytest.raises(ShapeNotOffered, match="us-east4"):
        groups.ensure(_spec(regions=["us-east4"]))
    assert fake.requests == []


def test_credentials_are_checked_at_start(groups, settings, fake, tmp_path):
    assert groups.check_credentials() == f"project {PROJECT}"

    fake.reject_credentials = True
    with pytest.raises(CloudCredentialsError, match="GCP rejected the credentials"):
        groups.check_credentials()

    # No credentials at all, in a process of its own: google-auth reads NO_GCE_CHECK once.
    code = (
        "from deploy.clouds.gcp import GcpNodeGroups, GcpSettings\n"
        f"GcpNodeGroups(GcpSettings.model_validate_json({settings.model_dump_json()!r}))"
        ".check_credentials()"
    )
    env = {k: v for k, v in os.environ.items() if k.split("_")[0] not in ("GOOGLE", "GCE")}
    env.update(CLOUDSDK_CONFIG=str(tmp_path), NO_GCE_CHECK="true", GCE_METADATA_IP="127.0.0.1:1")
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True
    )
    expected = "CloudCredentialsError: no GCP credentials found: set GOOGLE_APPLICATION_CREDENTIALS"
    assert result.returncode == 1 and expected in result.stderr, result.stderr


def test_the_control_plane_imports_the_gcp_provider_without_the_sdk():
    code = (
        "import sys, deploy.clouds, deploy.clouds.gcp as gcp; "
        "assert not [m for m in sys.modules if m.startswith('google')], sorted(sys.modules); "
        "sys.modules['google.cloud.compute_v1'] = None; "  # as if it were not installed
        "gcp.GcpNodeGroups(gcp.GcpSettings(installation_id='i', project='p', images={'r': 'i'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert "NodeGroupError: the gcp provider needs google-cloud-compute: pip" in result.stderr
