"""`CloudProvider` with a recording cluster and recording node groups: what it asks the cloud
for, how groups follow their apps (scaled to the apps' target replicas, released after two
syncs without an app, never right after their own ensure), how a capacity refusal reaches
the app's status, and what it refuses before any cloud call. `Placement.candidates` too."""

from __future__ import annotations

from typing import Any

import pytest

from deploy.catalog import ShapeRefused, candidates_across
from deploy.clouds.base import (
    CapacityError,
    NodeGroup,
    NodeGroupSpec,
    ShapeFailure,
    node_resource,
)
from deploy.providers.base import (
    AppPhase,
    AppSpec,
    AppStatus,
    ReplicaGroup,
    UnsupportedCapacity,
    Workload,
    replica_shape,
)
from deploy.providers.cloud import CloudOptions, CloudProvider
from deploy.providers.placement import Placement
from workers.model.source import ModelSource
from workers.serve.config import WorkerAppConfig


class Cluster:
    """The Ray side: apps by name; Serve's target replicas are the spec's."""

    name = "cluster"

    def __init__(self) -> None:
        self.apps: dict[str, AppSpec] = {}
        self.phase: dict[str, AppPhase] = {}

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def check_supported(self, workload: Workload) -> None:
        assert not workload.placed(), "placed groups never reach the cluster's check"

    def shortfall(self, workload: Workload) -> str | None:
        return None

    def deploy(self, spec: AppSpec) -> None:
        self.apps[spec.name] = spec
        self.phase[spec.name] = AppPhase.DEPLOYING

    def status(self, name: str) -> AppStatus | None:
        spec = self.apps.get(name)
        if spec is None:
            return None
        worker = spec.worker
        return AppStatus(
            name, self.phase[name], "", 0, worker.num_replicas, node_resource=worker.node_resource
        )

    def list_apps(self, prefix: str) -> dict[str, AppStatus]:
        found = {n: self.status(n) for n in self.apps if n.startswith(prefix)}
        return {n: s for n, s in found.items() if s is not None}

    def delete(self, name: str) -> None:
        self.apps.pop(name, None)

    def handle(self, name: str) -> Any: ...
    def logs(self, name: str) -> str:
        return ""


class Groups:
    """A cloud that records every call; `refuse` makes ensure raise CapacityError."""

    def __init__(self) -> None:
        self.groups: dict[str, NodeGroup] = {}
        self.calls: list[tuple[str, Any]] = []
        self.refuse = False

    def check_credentials(self) -> str:
        return "tester"

    def ensure(self, spec: NodeGroupSpec) -> NodeGroup:
        self.calls.append(("ensure", spec))
        first = spec.candidates[0]
        if self.refuse:
            failure = ShapeFailure(
                region=first.region,
                instance_type=first.name,
                code="InsufficientInstanceCapacity",
                message="none left in us-east-1a",
            )
            raise CapacityError((failure,))
        group = NodeGroup(
            name=spec.name, cloud="aws", region=first.region, instance_type=first.name,
            desired=spec.count, running=spec.count, tags=spec.tags,
        )  # fmt: skip
        self.groups[spec.name] = group
        return group

    def scale(self, name: str, count: int) -> NodeGroup:
        self.calls.append(("scale", (name, count)))
        self.groups[name] = self.groups[name].model_copy(update={"desired": count})
        return self.groups[name]

    def release(self, name: str) -> None:
        self.calls.append(("release", name))
        self.groups.pop(name, None)

    def list_owned(self) -> list[NodeGroup]:
        return list(self.groups.values())

    def sweep_orphans(self, owned_names: set[str]) -> list[str]:
        self.calls.append(("sweep", frozenset(owned_names)))
        return []


def _placement(entity: str = "llm", **kw: Any) -> Placement:
    values: dict[str, Any] = {
        "cloud": "aws",
        "regions": ("us-east-1",),
        "workload_type": "GPU_MEDIUM",
        "endpoint_id": "ep1",
        "served_entity": entity,
    }
    return Placement(**(values | kw))


def _worker(replicas: int = 1) -> WorkerAppConfig:
    return WorkerAppConfig(
        model=ModelSource(preset="dbrx-tiny"), device="cuda", num_replicas=replicas
    )


@pytest.fixture
def parts() -> tuple[CloudProvider, Cluster, Groups]:
    cluster, groups = Cluster(), Groups()
    provider = CloudProvider(
        cluster,
        {"aws": groups},
        CloudOptions("inst", "img:1", "10.0.0.1:6379", sync_interval_s=3600),
    )
    provider.start()
    return provider, cluster, groups


def test_deploy_ensures_the_entitys_group_then_places_the_app_on_it(parts):
    provider, cluster, groups = parts
    provider.deploy(AppSpec("ms-ep1-llm-a", _worker(2), _placement()))

    [(_, spec)] = groups.calls
    assert (spec.count, spec.endpoint_id, spec.served_entity) == (2, "ep1", "llm")
    assert spec.candidates == candidates_across("aws", ["us-east-1"], "GPU_MEDIUM")
    assert spec.head_address == "10.0.0.1:6379" and spec.worker_image == "img:1"
    deployed = cluster.apps["ms-ep1-llm-a"].worker
    assert deployed.node_resource == node_resource(spec.name) == spec.ray_resource
    status = provider.status("ms-ep1-llm-a")
    assert status is not None and "waiting for 2 node(s) of g" in status.message


def test_an_app_without_placement_goes_straight_to_the_cluster(parts):
    provider, cluster, groups = parts
    provider.deploy(AppSpec("ms-ep1-cpu-a", _worker()))
    assert groups.calls == [] and cluster.apps["ms-ep1-cpu-a"].worker.node_resource is None


def test_the_group_follows_the_sum_of_its_apps_targets_then_is_released(parts):
    provider, cluster, groups = parts
    provider.deploy(AppSpec("ms-ep1-llm-old", _worker(1), _placement()))
    provider.deploy(AppSpec("ms-ep1-llm-new", _worker(3), _placement()))  # a rollout
    name = groups.calls[0][1].name
    assert groups.calls[1][1].count == 4  # room for the new app beside the old one
    assert groups.groups[name].desired == 4

    cluster.delete("ms-ep1-llm-old")  # the roll is done
    provider.sync()
    assert groups.calls[-1] == ("scale", (name, 3))

    cluster.delete("ms-ep1-llm-new")  # the endpoint is deleted
    provider._ensured.clear()  # as after a restart: nothing remembered
    provider.sync()
    assert name in groups.groups, "one sync without an app is not enough to release"
    provider.sync()
    assert groups.calls[-1] == ("release", name) and groups.groups == {}


def test_an_app_scaled_to_zero_scales_its_group_to_zero_and_keeps_it(parts):
    provider, cluster, groups = parts
    provider.deploy(AppSpec("ms-ep1-llm-a", _worker(2), _placement()))
    name = groups.calls[0][1].name
    cluster.apps["ms-ep1-llm-a"] = AppSpec(
        "ms-ep1-llm-a", cluster.apps["ms-ep1-llm-a"].worker.model_copy(update={"num_replicas": 0})
    )  # Serve's autoscaler parked it
    provider.sync()
    provider.sync()
    assert groups.calls[-1] == ("scale", (name, 0)) and name in groups.groups


def test_leftovers_are_swept_every_few_syncs_keeping_every_group_that_exists(parts):
    from deploy.providers.cloud import SWEEP_EVERY

    provider, _, groups = parts
    provider.deploy(AppSpec("ms-ep1-llm-a", _worker(), _placement()))
    for _ in range(SWEEP_EVERY):
        provider.sync()
    sweeps = [arg for call, arg in groups.calls if call == "sweep"]
    assert sweeps == [frozenset(groups.groups)]


def test_a_group_without_an_app_is_kept_until_a_restarted_plane_could_have_deployed_it(parts):
    """A control plane killed between creating a group and deploying its app: the next
    process holds the group unheld until the endpoint's lease has moved to it and its
    reconciler has deployed the app. Released only when unheld `release_after_s` long."""
    _, cluster, groups = parts
    provider = CloudProvider(
        cluster,
        {"aws": groups},
        CloudOptions("inst", "img:1", "10.0.0.1:6379", sync_interval_s=3600, release_after_s=60),
    )
    provider.start()
    spec = provider._node_spec("ms-ep1-llm-a", _placement(), _worker())
    groups.ensure(spec)  # the killed process made it; this one has no memory of it
    provider.sync()
    provider.sync()
    assert spec.name in groups.groups, "released while the lease had not yet moved over"
    provider._unowned[spec.ray_resource] -= 61  # unheld for longer than the grace
    provider.sync()
    assert groups.calls[-1] == ("release", spec.name) and groups.groups == {}


def test_a_group_ensured_just_now_is_not_released_before_its_app_shows(parts):
    provider, cluster, groups = parts
    provider.deploy(AppSpec("ms-ep1-llm-a", _worker(), _placement()))
    cluster.apps.clear()  # another process's view: the app is not listed yet
    provider.sync()
    provider.sync()
    assert [c for c, _ in groups.calls] == ["ensure"]


def test_a_capacity_refusal_fails_the_app_and_the_cloud_is_asked_again_after_a_backoff(parts):
    provider, cluster, groups = parts
    groups.refuse = True
    provider.deploy(AppSpec("ms-ep1-llm-a", _worker(), _placement()))

    status = provider.list_apps("ms-")["ms-ep1-llm-a"]
    assert status.phase == AppPhase.FAILED
    assert "InsufficientInstanceCapacity: none left in us-east-1a" in status.message
    assert cluster.apps == {}  # nothing deployed without capacity
    provider.deploy(AppSpec("ms-ep1-llm-a", _worker(), _placement()))  # the next tick
    assert [c for c, _ in groups.calls] == ["ensure"], "asked the cloud again at once"
    provider._retry_at["ms-ep1-llm-a"] = (0.0, 1)  # the backoff is over
    groups.refuse = False
    provider.deploy(AppSpec("ms-ep1-llm-a", _worker(), _placement()))
    assert [c for c, _ in groups.calls] == ["ensure", "ensure"]
    assert provider.list_apps("ms-")["ms-ep1-llm-a"].phase == AppPhase.DEPLOYING
    provider.delete("ms-ep1-llm-a")
    assert provider.list_apps("ms-") == {}


def test_what_the_installation_or_catalog_cannot_host_is_refused_before_any_cloud_call(parts):
    provider, _, groups = parts
    shape = replica_shape(_worker())

    def check(placement: Placement) -> None:
        provider.check_supported(Workload((ReplicaGroup("llm", shape, 1, placement),)))

    with pytest.raises(UnsupportedCapacity, match="cloud 'gcp' is not configured"):
        check(_placement(cloud="gcp", regions=("us-central1",)))
    with pytest.raises(UnsupportedCapacity, match=r"p5\.48xlarge"):
        check(_placement(workload_type="GPU_SMALL", instance_types=("p5.48xlarge",)))
    with pytest.raises(UnsupportedCapacity, match="CPU"):
        check(_placement(workload_type="CPU"))
    check(_placement())
    assert groups.calls == []


def test_candidates_go_region_by_region_with_pinned_shapes_in_their_order():
    shapes = [c.name for c in candidates_across("aws", ["us-east-1"], "GPU_MEDIUM")]
    placement = _placement(
        regions=("us-east-1", "us-west-2"), instance_types=(shapes[1], shapes[0])
    )
    found = [(c.region, c.name) for c in placement.candidates()]
    assert found[:2] == [("us-east-1", shapes[1]), ("us-east-1", shapes[0])]
    assert {region for region, _ in found[2:]} == {"us-west-2"}
    with pytest.raises(ShapeRefused):
        _placement(instance_types=("no-such-type",)).candidates()


def test_the_control_plane_starts_with_clouds_configured_without_importing_their_sdks():
    import subprocess
    import sys

    code = (
        "import sys, control_plane.app, deploy.providers.cloud, deploy.clouds.gcp, "
        "deploy.clouds.azure, deploy.clouds.aws\n"
        "from control_plane.settings import Settings\n"
        "Settings(clouds={'aws': {'ami_ids': {'us-east-1': 'ami-1'}}})\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore', 'azure')"
        " or m.startswith('google.cloud')]\n"
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_moeserve_run_without_cloud_credentials_stops_at_once_saying_what_to_set(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOESERVE_"))}
    env |= {
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "MOESERVE_CLOUDS": '{"aws": {"ami_ids": {"us-east-1": "ami-1"}}}',
    }
    moeserve = Path(sys.executable).with_name("moeserve")
    done = subprocess.run(
        [str(moeserve), "run", "--data-dir", str(tmp_path), "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "moeserve: cannot start: aws: no AWS credentials found: set AWS_" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_ray_provider_alone_refuses_an_app_placed_in_a_cloud() -> None:
    """A cloud workspace's entity is never deployed on the local cluster instead (e.g. after
    its cloud was removed from the settings): refused, naming the missing configuration."""
    from deploy.providers.local import LocalRayProvider

    provider = LocalRayProvider()
    provider._started = True  # no Ray needed: the refusal comes before any cluster call
    spec = AppSpec("ms-ep1-llm-a", _worker(), _placement())
    with pytest.raises(UnsupportedCapacity, match=r"runs in aws, which is not configured"):
        provider.deploy(spec)
    shape = replica_shape(_worker())
    with pytest.raises(UnsupportedCapacity, match=r"clouds\.aws"):
        provider.check_supported(Workload((ReplicaGroup("llm", shape, 1, _placement()),)))


def test_a_due_sync_reuses_the_listing_the_reconciler_asked_for(parts):
    """One `list_apps` of the provider lists the cluster's apps once, sync or not: the sync
    works from the same listing (every app, whatever the prefix), and the answer keeps only
    the prefix."""
    provider, cluster, groups = parts
    provider.deploy(AppSpec("ms-ep1-llm-old", _worker(1), _placement()))
    provider.deploy(AppSpec("ms-ep1-llm-new", _worker(3), _placement()))
    cluster.apps["other-app"] = cluster.apps["ms-ep1-llm-new"]  # not ours: another prefix
    cluster.phase["other-app"] = AppPhase.RUNNING
    calls: list[str] = []
    listing = cluster.list_apps

    def counted(prefix: str) -> dict[str, AppStatus]:
        calls.append(prefix)
        return listing(prefix)

    cluster.list_apps = counted
    cluster.delete("ms-ep1-llm-old")
    provider._last_sync = float("-inf")  # a sync is due
    shown = provider.list_apps("ms-")
    assert calls == [""]
    assert set(shown) == {"ms-ep1-llm-new"}
    name = groups.calls[0][1].name
    # the sync saw both apps holding the group: the other prefix's counts as well
    assert groups.calls[-1] == ("scale", (name, 6))
