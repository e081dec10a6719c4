"""Pure capacity decisions: replicas from workload size or provisioned throughput, the
Serve application name of a served entity, the worker config it deploys as, and the
`Workload` a set of entities asks a provider to host."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable

from control_plane.endpoints.config import ServedEntity
from control_plane.settings import WorkerDefaults
from deploy.providers.base import ReplicaGroup, Workload, replica_shape
from deploy.providers.placement import Placement
from deploy.workload_types import workload_type
from workers.serve.config import AutoscalingSettings, WorkerAppConfig

# Concurrent requests each workload size promises (the upper end of Databricks' ranges).
WORKLOAD_CONCURRENCY = {"Small": 4, "Medium": 16, "Large": 64}

APP_PREFIX = "ms-"


# Tokens/s one provisioned-throughput chunk of a model buys: (family, name, version) -> size.
# The control plane answers from the rate card in force (`ControlPlane.chunk_size`).
ChunkSize = Callable[[str, str, str], int]


def replicas_for_size(size: str, defaults: WorkerDefaults) -> int:
    return max(1, math.ceil(WORKLOAD_CONCURRENCY[size] / defaults.concurrency_per_replica))


def endpoint_app_prefix(endpoint_id: str) -> str:
    return f"{APP_PREFIX}{endpoint_id}-"


def endpoint_id_of_app(app_name: str) -> str | None:
    if not app_name.startswith(APP_PREFIX):
        return None
    rest = app_name[len(APP_PREFIX) :]
    endpoint_id, sep, _ = rest.partition("-")
    return endpoint_id if sep else None


def app_name(endpoint_id: str, entity: ServedEntity) -> str:
    """The Serve application that runs `entity` (its own `app_name` aside): deterministic,
    and different whenever what the app runs differs, so a config update that changes an
    entity deploys a new app beside the old one, and one that does not keeps it."""
    spec = {
        "model_source": entity.model_source.model_dump(),
        "workload_type": entity.workload_type,
        "min_replicas": entity.min_replicas,
        "max_replicas": entity.max_replicas,
        "scale_to_zero_enabled": entity.scale_to_zero_enabled,
        "environment_vars": entity.environment_vars,
    }
    if entity.placement is not None:  # absent otherwise: app names of older configs stay
        spec["placement"] = entity.placement.model_dump(mode="json")
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    return f"{endpoint_app_prefix(endpoint_id)}{entity.name}-{digest}"


def worker_config(
    entity: ServedEntity, defaults: WorkerDefaults, environment: dict[str, str] | None = None
) -> WorkerAppConfig:
    """The worker app that serves `entity`. `environment`: the replicas' environment
    variables with secret references resolved (`EnvironmentPolicy.resolved`); none when
    the config is only checked (capacity)."""
    shape = workload_type(entity.workload_type)
    scaling: AutoscalingSettings | None = None
    replicas: int | None = entity.max_replicas
    if entity.scale_to_zero_enabled or entity.min_replicas != entity.max_replicas:
        scaling = AutoscalingSettings(
            min_replicas=entity.min_replicas,
            max_replicas=entity.max_replicas,
            target_ongoing_requests=defaults.concurrency_per_replica,
            downscale_delay_s=defaults.downscale_delay_s,
        )
        replicas = None
    return WorkerAppConfig(
        name="llm",
        model=entity.model_source,
        device=shape.device,
        shards=shape.devices_per_replica,
        num_replicas=replicas,
        autoscaling=scaling,
        max_ongoing_requests=defaults.max_ongoing_requests,
        engine=defaults.engine,
        cpus_per_shard=defaults.cpus_per_shard,
        threads_per_shard=defaults.threads_per_shard,
        environment_vars=environment or {},
    )


# Where an entity runs: its cloud placement, or None for the cluster as it is.
PlacementOf = Callable[[ServedEntity], Placement | None]


def hosted_workload(
    entities: Iterable[ServedEntity],
    defaults: WorkerDefaults,
    *,
    label: str = "",
    placement_of: PlacementOf | None = None,
) -> Workload:
    """What the cluster must be able to host for `entities` to serve: each at its minimum
    replicas, and at least one (a scale-to-zero entity must be able to wake). `label`
    follows each entity's name in messages."""
    return Workload(
        tuple(
            ReplicaGroup(
                f"{e.name}{label}",
                replica_shape(worker_config(e, defaults)),
                max(e.min_replicas, 1),
                None if placement_of is None else placement_of(e),
            )
            for e in entities
        )
    )


def starting_workload(
    entities: Iterable[ServedEntity],
    defaults: WorkerDefaults,
    placement_of: PlacementOf | None = None,
) -> Workload:
    """What deploying `entities` starts at once: the minimum replicas of each (Serve starts
    an autoscaling deployment at its minimum; a scale-to-zero entity starts none)."""
    return Workload(
        tuple(
            ReplicaGroup(
                e.name,
                replica_shape(worker_config(e, defaults)),
                e.min_replicas,
                None if placement_of is None else placement_of(e),
            )
            for e in entities
        )
    )


def workload_union(*workloads: Workload) -> Workload:
    return Workload(tuple(group for workload in workloads for group in workload.groups))
