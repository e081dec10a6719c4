"""`CloudProvider`: the `Provider` the reconciler uses when workspaces live in clouds.

Applications still run on the installation's one Ray cluster (an inner provider, usually
`LocalRayProvider` attached to it); what a cloud adds is capacity. For an app whose spec
carries a `Placement`, `deploy` first ensures the served entity's node group (instances of
the first catalog shape the cloud can supply, whose nodes join the cluster advertising the
group's own Ray resource), then deploys the app with each replica holding 1 of that
resource, so its replicas run there and nowhere else, one per node. Apps without a
placement pass straight through.

Groups follow their apps, every `sync_interval_s` (from `list_apps`, in the reconciler's
thread): a group's node count is the sum of the target replicas Serve reports for the apps
that hold its resource (a rollout's old and new app share the entity's group; scale to
zero releases the instances), and a group no app holds in two syncs in a row is released
— so deleting an endpoint, or its apps disappearing while this process was down, leaves
nothing behind. The two-sync rule keeps a second control plane from releasing a group
another one has just ensured and not yet deployed to.

Capacity and quota refusals of every candidate shape make the app FAILED with the cloud's
messages (the reconciler turns that into DEPLOYMENT_FAILED); the shapes refused before the
one that worked are reported in the app's status message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from pydantic import SecretStr

from deploy.catalog import ShapeRefused
from deploy.clouds.base import (
    CapacityError,
    NodeGroup,
    NodeGroupError,
    NodeGroups,
    NodeGroupSpec,
    node_resource,
)
from deploy.providers.base import (
    GIB,
    AppPhase,
    AppSpec,
    AppStatus,
    Provider,
    ReplicaShape,
    UnsupportedCapacity,
    Workload,
    amount,
)
from deploy.providers.placement import Placement
from workers.serve.config import WorkerAppConfig

log = logging.getLogger(__name__)

HeadAddress = Callable[[], str]
SWEEP_EVERY = 10  # syncs between sweeps for leftovers without a group
# After every shape was refused, the same app asks the cloud again only after this (doubling
# with each refusal, up to the maximum): the reconciler redeploys a failed live app every
# tick, and a cloud out of capacity must not be asked every second.
REFUSAL_BACKOFF_S = 30.0
MAX_REFUSAL_BACKOFF_S = 600.0


@dataclass(frozen=True)
class CloudOptions:
    installation_id: str
    worker_image: str
    head_address: str | HeadAddress  # host:port nodes join, or how to find it after start
    sync_interval_s: float = 30.0
    ray_auth_token: SecretStr | None = None  # the cluster's, when it runs with token auth
    # A group no app holds is released only once it has been so for this long (and at two
    # syncs in a row): long enough for a restarted control plane to take over the leases
    # of the endpoints it serves and deploy their apps onto the groups they already have.
    release_after_s: float = 0.0


@dataclass
class _Ensured:
    """A group this process ensured, as the cloud answered."""

    cloud: str
    group: NodeGroup
    at: float  # monotonic time of the ensure


class CloudProvider:
    def __init__(
        self, cluster: Provider, clouds: Mapping[str, NodeGroups], options: CloudOptions
    ) -> None:
        self.cluster = cluster
        self.clouds = dict(clouds)
        self.options = options
        self.name = cluster.name
        self._head_address: str | None = None
        self._lock = threading.Lock()
        self._ensured: dict[str, _Ensured] = {}  # by the group's Ray resource
        self._refused: dict[str, AppStatus] = {}  # apps whose placement failed, by name
        self._retry_at: dict[str, tuple[float, int]] = {}  # app -> (when, refusals so far)
        self._unowned: dict[str, float] = {}  # groups no app held: since when (monotonic)
        self._last_sync = float("-inf")
        self.syncs = 0

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the cluster provider, then check each cloud's credentials (a clear error
        now rather than at the first endpoint)."""
        self.cluster.start()
        for cloud, groups in self.clouds.items():
            identity = groups.check_credentials()
            log.info("%s node groups act as %s", cloud, identity)
        head = self.options.head_address
        self._head_address = head if isinstance(head, str) else head()
        log.info("cloud nodes join the Ray cluster at %s", self._head_address)

    def stop(self) -> None:
        self.cluster.stop()

    # -- capacity ------------------------------------------------------------------------

    def check_supported(self, workload: Workload) -> None:
        self.cluster.check_supported(workload.on_cluster())
        for group in workload.placed():
            assert group.placement is not None
            _check_placement(group.name, group.placement, group.shape, self.clouds)

    def shortfall(self, workload: Workload) -> str | None:
        # Placed groups bring their own nodes: whatever they wait for shows in their status.
        return self.cluster.shortfall(workload.on_cluster())

    # -- applications --------------------------------------------------------------------

    def deploy(self, spec: AppSpec) -> None:
        if spec.placement is None:
            self.cluster.deploy(spec)
            return
        current = self.cluster.status(spec.name)
        if current is not None and current.phase not in (AppPhase.DELETING, AppPhase.FAILED):
            return  # the name encodes the config: nothing to change
        placement = spec.placement
        with self._lock:
            retry = self._retry_at.get(spec.name)
        if retry is not None and time.monotonic() < retry[0]:
            return  # refused a moment ago: its FAILED status stands until the backoff ends
        try:
            node_spec = self._node_spec(spec.name, placement, spec.worker)
            group = self.clouds[placement.cloud].ensure(node_spec)
        except (NodeGroupError, ShapeRefused) as exc:
            message = exc.cloud_message if isinstance(exc, CapacityError) else str(exc)
            log.warning("node group for %s failed: %s", spec.name, message)
            refusals = (retry[1] if retry else 0) + 1
            delay = min(REFUSAL_BACKOFF_S * 2 ** (refusals - 1), MAX_REFUSAL_BACKOFF_S)
            with self._lock:
                self._retry_at[spec.name] = (time.monotonic() + delay, refusals)
                self._refused[spec.name] = AppStatus(
                    spec.name,
                    AppPhase.FAILED,
                    f"no {placement.cloud} capacity for {placement.served_entity}: {message}",
                    0,
                    0,
                )
            return
        resource = node_resource(group.name)
        with self._lock:
            self._refused.pop(spec.name, None)
            self._retry_at.pop(spec.name, None)
            self._ensured[resource] = _Ensured(placement.cloud, group, time.monotonic())
            self._unowned.pop(resource, None)
        log.info(
            "node group %s: %d × %s in %s for %s",
            group.name, group.desired, group.instance_type, group.region, spec.name,
        )  # fmt: skip
        worker = spec.worker.model_copy(update={"node_resource": resource})
        self.cluster.deploy(AppSpec(spec.name, worker))

    def status(self, name: str) -> AppStatus | None:
        status = self.cluster.status(name)
        if status is None:
            with self._lock:
                return self._refused.get(name)
        return self._annotated(status)

    def list_apps(self, prefix: str) -> dict[str, AppStatus]:
        # One listing serves both the answer and, when one is due, the sync (which needs
        # every app holding a node group, whatever the prefix asked for).
        every = self.cluster.list_apps("")
        if time.monotonic() - self._last_sync >= self.options.sync_interval_s:
            self.sync(every)
        apps = {name: status for name, status in every.items() if name.startswith(prefix)}
        with self._lock:
            refused = {n: s for n, s in self._refused.items() if n.startswith(prefix)}
        return refused | {name: self._annotated(status) for name, status in apps.items()}

    def delete(self, name: str) -> None:
        with self._lock:
            self._refused.pop(name, None)
            self._retry_at.pop(name, None)
        self.cluster.delete(name)  # its group follows at the next sync

    def handle(self, name: str) -> Any:
        return self.cluster.handle(name)

    def logs(self, name: str) -> str:
        return self.cluster.logs(name)

    # -- node groups follow their apps ---------------------------------------------------

    def sync(self, apps: dict[str, AppStatus] | None = None) -> None:
        """Scale each group to what its apps want, release the ones no app holds (at two
        syncs in a row, `release_after_s` apart at least); every `SWEEP_EVERY` syncs, also
        what a crash left without a group (a template made just before the control plane
        died). Cloud errors are logged (any exception: a cloud SDK raises its own); the
        next sync tries again. `apps`: every Serve application, when the caller has just
        listed them."""
        self._last_sync = time.monotonic()
        self.syncs += 1
        wanted, unknown = _wanted_nodes(self.cluster.list_apps("") if apps is None else apps)
        for cloud, groups in self.clouds.items():
            try:
                owned = groups.list_owned()
            except Exception:
                log.exception("listing %s node groups failed", cloud)
                continue
            for group in owned:
                try:
                    self._sync_group(groups, group, wanted, unknown)
                except Exception:
                    log.exception("syncing node group %s failed", group.name)
            if self.syncs % SWEEP_EVERY == 0:
                # Every group that exists is kept: only leftovers without one go. A template
                # another control plane is between creating and using is rare, and its
                # ensure is simply retried on the next tick.
                try:
                    swept = groups.sweep_orphans({g.name for g in owned})
                except Exception:
                    log.exception("sweeping %s leftovers failed", cloud)
                else:
                    if swept:
                        log.info("released %s leftovers of %s", cloud, ", ".join(swept))

    def _sync_group(
        self, groups: NodeGroups, group: NodeGroup, wanted: Counter[str], unknown: set[str]
    ) -> None:
        resource = node_resource(group.name)
        if resource in wanted or resource in unknown:
            with self._lock:
                self._unowned.pop(resource, None)
            if resource in wanted and wanted[resource] != group.desired:
                count = wanted[resource]
                log.info("scaling node group %s: %d → %d", group.name, group.desired, count)
                scaled = groups.scale(group.name, count)
                with self._lock:
                    if resource in self._ensured:
                        self._ensured[resource].group = scaled
            return
        with self._lock:
            ensured = self._ensured.get(resource)
            grace = 2 * self.options.sync_interval_s
            if ensured is not None and ensured.at > self._last_sync - grace:
                return  # ensured here just now; its app may not be listed yet
            since = self._unowned.get(resource)
            if since is None:
                self._unowned[resource] = self._last_sync  # first strike
                return
            if self._last_sync - since < self.options.release_after_s:
                return  # its endpoint's new lease holder may not have deployed it yet
        log.info("releasing node group %s: no application holds it", group.name)
        groups.release(group.name)
        with self._lock:
            self._unowned.pop(resource, None)
            self._ensured.pop(resource, None)

    # -- helpers -------------------------------------------------------------------------

    def _node_spec(self, app: str, placement: Placement, worker: WorkerAppConfig) -> NodeGroupSpec:
        """The entity's group with room for this app's starting replicas besides what the
        entity's other apps (a rollout's old one) hold now."""
        spec = NodeGroupSpec(
            installation_id=self.options.installation_id,
            endpoint_id=placement.endpoint_id,
            served_entity=placement.served_entity,
            app_name=app,
            candidates=placement.candidates(),
            count=0,
            head_address=self._require_head(),
            worker_image=self.options.worker_image,
            ray_auth_token=self.options.ray_auth_token,
        )
        wanted, _ = _wanted_nodes(self.cluster.list_apps(""), skip=app)
        count = wanted[spec.ray_resource] + _starting_replicas(worker)
        ceiling = wanted[spec.ray_resource] + _max_replicas(worker)
        return spec.model_copy(update={"count": count, "max_count": max(ceiling, count, 1)})

    def _annotated(self, status: AppStatus) -> AppStatus:
        if status.node_resource is None:
            return status
        with self._lock:
            ensured = self._ensured.get(status.node_resource)
        if ensured is None:
            return status
        group = ensured.group
        where = f"{group.instance_type} in {group.region} ({ensured.cloud} node group {group.name})"
        refused = f"; refused before it: {group.message}" if group.failures else ""
        note = f"on {where}{refused}"
        message = status.message
        if status.phase == AppPhase.DEPLOYING and status.running_replicas == 0:
            waiting = f"waiting for {group.desired} node(s) of {where} to join the cluster"
            message = f"{waiting}{refused}. {message}".strip()
        return replace(status, message=message, placement_note=note)

    def _require_head(self) -> str:
        if self._head_address is None:
            raise RuntimeError("CloudProvider.start() has not been called")
        return self._head_address


def _wanted_nodes(
    apps: Mapping[str, AppStatus], skip: str | None = None
) -> tuple[Counter[str], set[str]]:
    """Nodes each group's apps want now (Serve's target replicas; a DELETING app none), and
    the groups with an app whose target Serve does not know yet."""
    wanted: Counter[str] = Counter()
    unknown: set[str] = set()
    for name, status in apps.items():
        resource = status.node_resource
        if resource is None or name == skip:
            continue
        if status.phase == AppPhase.DELETING:
            wanted[resource] += 0
        elif status.target_replicas is None:
            unknown.add(resource)
        else:
            wanted[resource] += status.target_replicas
    return wanted, unknown


def _starting_replicas(worker: WorkerAppConfig) -> int:
    if worker.autoscaling is not None:
        return worker.autoscaling.min_replicas
    return worker.num_replicas or 0


def _max_replicas(worker: WorkerAppConfig) -> int:
    if worker.autoscaling is not None:
        return worker.autoscaling.max_replicas
    return worker.num_replicas or 0


def _check_placement(
    name: str, placement: Placement, shape: ReplicaShape, clouds: Mapping[str, NodeGroups]
) -> None:
    """Refuse, before any cloud call, what the installation or the catalog cannot host."""
    if placement.cloud not in clouds:
        configured = ", ".join(sorted(clouds)) or "none"
        raise UnsupportedCapacity(
            f"served entity {name!r}: cloud {placement.cloud!r} is not configured on this "
            f"installation (configured: {configured})"
        )
    try:
        candidates = placement.candidates()
    except ShapeRefused as exc:
        raise UnsupportedCapacity(f"served entity {name!r}: {exc}") from None
    too_small = [
        c.name
        for c in candidates
        if c.instance_type.vcpus < shape.cpus or c.instance_type.ram_gib * GIB < shape.memory_bytes
    ]
    if len(too_small) == len(candidates):
        raise UnsupportedCapacity(
            f"served entity {name!r} needs {amount('CPU', shape.cpus)} and "
            f"{amount('memory', shape.memory_bytes)} per replica; "
            f"{', '.join(too_small)} have less"
        )
