"""Azure node groups through the real azure-mgmt-compute client against a fake Resource
Manager (tests/deploy/azure_fake.py): scale sets created, updated and deleted by long-running
operations the SDK's pollers wait for, VM instances launched per capacity, tags, paging, and
the capacity and quota refusals Azure sends (at once, or as a failed operation)."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

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
from deploy.clouds.azure import AzureNodeGroups, AzureSettings
from deploy.clouds.azure_scale_sets import image_reference
from tests.deploy.azure_fake import Body, FakeArm, fake_arm

SUBSCRIPTION = "6f1c2d3e-0000-4000-8000-00000000beef"
RESOURCE_GROUP = "moeserve-nodes"
REGIONS = ["eastus", "westus2"]
INSTALLATION = "inst1"
IMAGE = "Canonical:ubuntu-24_04-lts:server:latest"
SUBNETS = {r: f"/subscriptions/{SUBSCRIPTION}/resourceGroups/net/.../subnets/{r}" for r in REGIONS}
SSH_KEY = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC0test moeserve@test"
ALLOCATION_MESSAGE = (
    "Allocation failed. We do not have sufficient capacity for the requested VM size in this "
    "region. Read more about improving likelihood of allocation success at http://aka.ms/..."
)
SKU_MESSAGE = (
    "The requested VM size for resource '...' is currently not available in location 'eastus'. "
    "Please try another size or deploy to a different location or zones."
)
QUOTA_MESSAGE = (
    "Operation could not be completed as it results in exceeding approved "
    "standardNCADSA100v4Family Cores quota. Location: eastus, Current Limit: 0, ..."
)


class FakeCredential:
    """An azure-core `TokenCredential`: this token, or none (as a credential that has none)."""

    def __init__(self, token: str | None = "fake-arm-token") -> None:
        self.token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        if self.token is None:
            raise ClientAuthenticationError("no token for you")
        return AccessToken(self.token, int(time.time()) + 3600)


@pytest.fixture(scope="module")
def arm() -> Iterator[FakeArm]:
    with fake_arm(SUBSCRIPTION, RESOURCE_GROUP) as fake:
        yield fake


@pytest.fixture
def settings(arm: FakeArm) -> AzureSettings:
    arm.reset()
    return AzureSettings(
        installation_id=INSTALLATION, subscription_id=SUBSCRIPTION, resource_group=RESOURCE_GROUP,
        images=dict.fromkeys(REGIONS, IMAGE), subnet_ids=SUBNETS, ssh_public_key=SSH_KEY,
        base_url=arm.url,
    )  # fmt: skip


def _provider(settings: AzureSettings) -> AzureNodeGroups:
    return AzureNodeGroups(settings, FakeCredential(), polling_interval=0)


@pytest.fixture
def groups(settings: AzureSettings) -> AzureNodeGroups:
    return _provider(settings)


def _spec(
    workload: str = "GPU_MEDIUM", count: int = 1, entity: str = "mixtral-1", **kw: Any
) -> NodeGroupSpec:
    return NodeGroupSpec(
        installation_id=kw.pop("installation_id", INSTALLATION),
        endpoint_id=kw.pop("endpoint_id", "ep-42"),
        served_entity=entity,
        app_name=f"{entity}-v1",
        candidates=candidates_across("azure", kw.pop("regions", ["eastus"]), workload),
        count=count,
        head_address="10.0.0.5:6379",
        worker_image="registry.example.com/moeserve/worker:0.1.0",
        **kw,
    )


def _shapes(workload: str = "GPU_MEDIUM") -> list[str]:
    return [c.name for c in candidates_across("azure", ["eastus"], workload)]


def _writes(arm: FakeArm) -> list[tuple[str, str]]:
    return [(r.method, r.path.rsplit("/", 1)[-1]) for r in arm.requests if r.method != "GET"]


def _size(name: str) -> Any:
    return lambda body: body["sku"]["name"] == name


def test_ensure_creates_one_scale_set_of_the_catalog_shape_with_counts_and_tags(groups, arm):
    spec = _spec(count=2)
    expected = _shapes()[0]

    group = groups.ensure(spec)

    assert (group.name, group.region, group.instance_type) == (spec.name, "eastus", expected)
    assert (group.desired, group.running, group.failures) == (2, 2, ())
    [stored] = arm.scale_sets.values()
    assert stored["sku"] == {"name": expected, "tier": "Standard", "capacity": 2}
    assert stored["location"] == "eastus"
    assert stored["tags"] == {**spec.tags, "moeserve:instance-type": expected}
    properties = stored["properties"]
    modes = (properties["orchestrationMode"], properties["upgradePolicy"]["mode"])
    assert modes == ("Uniform", "Manual") and properties["overprovision"] is False
    profile = properties["virtualMachineProfile"]
    assert base64.b64decode(profile["osProfile"]["customData"]).decode() == startup_script(spec)
    assert profile["storageProfile"]["imageReference"]["offer"] == "ubuntu-24_04-lts"
    nic = profile["networkProfile"]["networkInterfaceConfigurations"][0]["properties"]
    assert nic["ipConfigurations"][0]["properties"]["subnet"]["id"].endswith("/subnets/eastus")
    view = groups.client.virtual_machine_scale_sets.get(RESOURCE_GROUP, spec.name)
    assert "customData" not in view["properties"]["virtualMachineProfile"]["osProfile"]
    assert [vm["sku"]["name"] for vm in arm.instances()] == [expected, expected]
    assert _writes(arm) == [("PUT", spec.name)]  # polled: InProgress, then Succeeded
    assert sum("/operations/" in r.path for r in arm.requests) == 2


def test_ensure_again_and_from_a_fresh_provider_changes_nothing(groups, settings, arm):
    first = groups.ensure(_spec())
    before = [vm["properties"]["vmId"] for vm in arm.instances()]

    again = groups.ensure(_spec())
    restarted = _provider(settings).ensure(_spec())

    assert again == first and restarted == first
    assert _writes(arm) == [("PUT", first.name)]
    assert len(arm.scale_sets) == 1
    assert [vm["properties"]["vmId"] for vm in arm.instances()] == before


class _Killed(BaseException):
    """The control plane dies mid-ensure (not an Exception: nothing may catch it)."""


def _kill_around_the_put(groups: AzureNodeGroups, when: str, monkeypatch: Any) -> None:
    """Make the provider die before its PUT is sent, or once Azure accepted the PUT and
    before anything was polled (the SDK's own `polling=False`: the PUT, nothing more)."""
    operations = groups.client.virtual_machine_scale_sets
    put = operations.begin_create_or_update

    def die(*args: Any, **kwargs: Any) -> Any:
        if when == "after the PUT":
            put(*args, **{**kwargs, "polling": False})
        raise _Killed

    monkeypatch.setattr(operations, "begin_create_or_update", die)


@pytest.mark.parametrize("killed", ["before the PUT", "after the PUT"])
def test_a_restart_after_a_kill_between_cloud_calls_leaves_one_group(
    groups, settings, arm, monkeypatch, killed
):
    _kill_around_the_put(groups, killed, monkeypatch)
    with pytest.raises(_Killed):
        groups.ensure(_spec())

    restarted = _provider(settings)
    group = restarted.ensure(_spec())

    assert len(arm.scale_sets) == 1
    assert (group.desired, group.running, len(arm.instances())) == (1, 1, 1)
    assert _writes(arm) == [("PUT", group.name)]  # the restart adopted the accepted PUT
    restarted.release(group.name)
    assert arm.scale_sets == {} and arm.instances() == []


def test_a_failed_scale_set_found_after_a_restart_is_replaced_by_the_next_shape(
    groups, settings, arm, monkeypatch
):
    shapes = _shapes()
    arm.fail_allocation("AllocationFailed", ALLOCATION_MESSAGE, when=_size(shapes[0]))
    _kill_around_the_put(groups, "after the PUT", monkeypatch)
    with pytest.raises(_Killed):
        groups.ensure(_spec())

    group = _provider(settings).ensure(_spec())

    assert group.instance_type == shapes[1] and group.running == 1
    [failure] = group.failures  # read from the failed scale set's instance view
    assert (failure.code, failure.message) == ("AllocationFailed", ALLOCATION_MESSAGE)
    assert len(arm.scale_sets) == 1


def test_scale_up_then_to_zero_releases_the_instances(groups, arm):
    name = groups.ensure(_spec(count=1)).name

    up = groups.scale(name, 3)
    assert (up.desired, up.running, len(arm.instances())) == (3, 3, 3)
    assert [vm["instanceId"] for vm in arm.instances()] == ["0", "1", "2"]
    down = groups.scale(name, 0)
    assert (down.desired, down.running) == (0, 0)
    assert arm.instances() == [] and len(arm.scale_sets) == 1
    assert _writes(arm) == [("PUT", name), ("PATCH", name), ("PATCH", name)]
    patch = next(r.body for r in arm.requests if r.method == "PATCH")
    assert patch == {"sku": {"name": _shapes()[0], "tier": "Standard", "capacity": 3}}
    with pytest.raises(NodeGroupNotFound):
        groups.scale("moeserve-inst1-nothing-here", 1)


def test_ensure_with_a_new_count_scales_the_existing_group(groups, arm):
    groups.ensure(_spec(count=1))
    group = groups.ensure(_spec(count=2))
    assert (group.desired, group.running, len(arm.scale_sets)) == (2, 2, 1)
    assert [m for m, _ in _writes(arm)] == ["PUT", "PATCH"]


def test_a_refusal_to_grow_keeps_the_group_and_says_why(groups, arm):
    name = groups.ensure(_spec(count=1)).name
    arm.fail_allocation("AllocationFailed", ALLOCATION_MESSAGE)

    group = groups.scale(name, 3)

    assert (group.desired, group.running, len(arm.instances())) == (3, 1, 1)
    assert ALLOCATION_MESSAGE in group.message


def test_release_leaves_nothing_and_is_idempotent(groups, arm):
    name = groups.ensure(_spec(count=2)).name
    groups.release(name)
    groups.release(name)  # ARM answers a DELETE of nothing with 204
    assert arm.scale_sets == {} and arm.instances() == []
    assert groups.list_owned() == []
    assert _writes(arm) == [("PUT", name), ("DELETE", name), ("DELETE", name)]


def test_a_capacity_refusal_on_the_first_shape_fails_over_to_the_next(groups, arm):
    shapes = _shapes()
    refused = arm.refuse("SkuNotAvailable", SKU_MESSAGE, when=_size(shapes[0]))

    group = groups.ensure(_spec())

    assert (len(refused), group.instance_type) == (1, shapes[1])
    [failure] = group.failures
    assert (failure.instance_type, failure.code) == (shapes[0], "SkuNotAvailable")
    assert SKU_MESSAGE in group.message
    assert [s["sku"]["name"] for s in arm.scale_sets.values()] == [shapes[1]]
    assert {vm["sku"]["name"] for vm in arm.instances()} == {shapes[1]}


def test_a_failed_allocation_is_replaced_by_the_next_shape(groups, arm):
    shapes = _shapes()
    arm.fail_allocation("AllocationFailed", ALLOCATION_MESSAGE, when=_size(shapes[0]))

    group = groups.ensure(_spec())

    assert group.instance_type == shapes[1]
    [failure] = group.failures
    assert (failure.code, failure.message) == ("AllocationFailed", ALLOCATION_MESSAGE)
    assert [m for m, _ in _writes(arm)] == ["PUT", "DELETE", "PUT"]  # the Failed one deleted
    assert len(arm.scale_sets) == 1 and len(arm.instances()) == 1


@pytest.mark.parametrize("refusal", ["at once", "as a failed operation"])
def test_a_quota_refusal_in_one_region_fails_over_to_the_next_region(groups, arm, refusal):
    def in_eastus(body: Body) -> bool:
        return bool(body["location"] == "eastus")

    if refusal == "at once":
        arm.refuse("OperationNotAllowed", QUOTA_MESSAGE, when=in_eastus)
    else:  # leaves a Failed scale set in eastus: the same name elsewhere needs it gone first
        arm.fail_allocation("QuotaExceeded", QUOTA_MESSAGE, when=in_eastus)

    group = groups.ensure(_spec("GPU_LARGE", regions=REGIONS))

    assert (group.region, group.instance_type) == ("westus2", "Standard_ND96amsr_A100_v4")
    assert [f.region for f in group.failures] == ["eastus"] * len(_shapes("GPU_LARGE"))
    assert QUOTA_MESSAGE in group.message
    assert [s["location"] for s in arm.scale_sets.values()] == ["westus2"]


@pytest.mark.parametrize("refusal", ["at once", "as a failed operation"])
def test_every_shape_refused_raises_capacity_error_with_the_clouds_message(groups, arm, refusal):
    spec = _spec("GPU_SMALL", regions=REGIONS)
    if refusal == "at once":
        arm.refuse("ZonalAllocationFailed", ALLOCATION_MESSAGE)
    else:
        arm.fail_allocation("AllocationFailed", ALLOCATION_MESSAGE)

    with pytest.raises(CapacityError) as raised:
        groups.ensure(spec)

    assert [f.instance_type for f in raised.value.failures] == [c.name for c in spec.candidates]
    assert ALLOCATION_MESSAGE in raised.value.cloud_message
    assert arm.scale_sets == {} and arm.instances() == []


def test_an_error_that_is_not_about_capacity_is_not_a_failover(groups, arm):
    arm.refuse("InvalidParameter", "The image does not exist.", status=400)
    with pytest.raises(HttpResponseError, match="The image does not exist"):
        groups.ensure(_spec())
    assert [m for m, _ in _writes(arm)] == ["PUT"]


def test_sweep_releases_what_no_endpoint_owns_and_only_this_installations(
    groups, settings, arm, monkeypatch
):
    kept = groups.ensure(_spec(entity="kept")).name
    orphan = groups.ensure(_spec(entity="orphan")).name
    stray = _spec(entity="stray")  # accepted by Azure, then the control plane died
    other = _provider(settings.model_copy(update={"installation_id": "other"}))
    foreign = other.ensure(_spec(entity="kept", installation_id="other")).name
    _kill_around_the_put(groups, "after the PUT", monkeypatch)
    with pytest.raises(_Killed):
        groups.ensure(stray)

    released = groups.sweep_orphans({kept})

    assert released == sorted([orphan, stray.name])
    assert [g.name for g in groups.list_owned()] == [kept]
    assert [g.name for g in other.list_owned()] == [foreign]
    assert any("$skiptoken" in r.query for r in arm.requests)  # 2 a page: nextLink followed


def test_missing_credentials_are_a_clear_error_at_start(settings, arm, monkeypatch):
    for key in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_USERNAME",
                "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_FEDERATED_TOKEN_FILE"):  # fmt: skip
        monkeypatch.delenv(key, raising=False)
    # DefaultAzureCredential's chain limited to the environment: no IMDS probe, no CLI.
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "EnvironmentCredential")
    missing = "no Azure credentials found: set AZURE_CLIENT_ID, AZURE_TENANT_ID"

    with pytest.raises(CloudCredentialsError, match=missing):
        AzureNodeGroups(settings).check_credentials()
    with pytest.raises(CloudCredentialsError, match=missing):
        AzureNodeGroups(settings, FakeCredential(None)).check_credentials()
    arm.rejected_tokens.add("revoked")
    with pytest.raises(CloudCredentialsError, match="Azure refused access to subscription"):
        AzureNodeGroups(settings, FakeCredential("revoked")).check_credentials()
    described = _provider(settings).check_credentials()
    assert described.endswith(f"resource group {RESOURCE_GROUP} (0 scale sets)")


def test_images_and_subnets_are_checked_before_any_call(settings, arm):
    no_subnet = settings.model_copy(update={"subnet_ids": {"eastus": SUBNETS["eastus"]}})
    with pytest.raises(ShapeNotOffered, match="region westus2 has no subnet"):
        _provider(no_subnet).ensure(_spec(regions=REGIONS))
    with pytest.raises(ShapeNotOffered, match="region westus3 has no image"):
        _provider(settings).ensure(_spec(regions=["westus3"]))
    assert arm.requests == []
    gallery, community = "/subscriptions/s/.../versions/1.0.0", "/CommunityGalleries/c/Images/i"
    assert image_reference(gallery) == {"id": gallery}
    assert image_reference(community) == {"communityGalleryImageId": community}
    with pytest.raises(ValueError, match="neither a resource id"):
        settings.model_validate({**settings.model_dump(), "images": {"eastus": "ubuntu"}})


def test_long_names_and_no_ssh_key_still_make_a_scale_set_azure_accepts(settings, arm):
    no_key = settings.model_copy(update={"ssh_public_key": None})
    _provider(no_key).ensure(_spec(endpoint_id="x" * 200))  # the fake checks what ARM checks
    [put] = [r for r in arm.requests if r.method == "PUT"]
    os_profile = put.body["properties"]["virtualMachineProfile"]["osProfile"]
    assert len(put.path.rsplit("/", 1)[-1]) <= 64 and len(os_profile["computerNamePrefix"]) <= 58
    linux = os_profile["linuxConfiguration"]  # a throwaway key: nobody can log in
    assert linux["disablePasswordAuthentication"] is True
    assert linux["ssh"]["publicKeys"][0]["keyData"].startswith("ssh-rsa ")


def test_the_control_plane_imports_the_azure_module_without_azure_packages():
    code = (
        "import sys, deploy.clouds, deploy.clouds.azure; "
        "assert not [m for m in sys.modules if m == 'azure' or m.startswith('azure.')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_the_sdk_the_provider_says_what_to_install(settings, monkeypatch):
    monkeypatch.setitem(sys.modules, "azure.mgmt.compute", None)
    with pytest.raises(NodeGroupError, match=r"pip install 'moeserve\[azure\]'"):
        AzureNodeGroups(settings, FakeCredential())
