"""Turn a create/update request into the normalized config the reconciler deploys.

Every rule a user can break is checked here, before anything is stored or deployed, and
fails with a 400 that says what to change.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from control_plane.endpoints.capacity import (
    ChunkSize,
    PlacementOf,
    app_name,
    hosted_workload,
    replicas_for_size,
    workload_union,
)
from control_plane.endpoints.config import EndpointConfig, Route, ServedEntity, TrafficConfig
from control_plane.endpoints.schemas import EndpointCoreConfigInput, ServedEntityInput
from control_plane.errors import InvalidParameter
from control_plane.registry import ResolvedModel
from control_plane.settings import SHARED_PREFIX, WorkerDefaults
from deploy.providers.base import Workload
from deploy.workload_types import WORKLOAD_TYPES

NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,63}")  # whole names: use fullmatch
MAX_SERVED_ENTITIES = 10

ModelResolver = Callable[[str, str], ResolvedModel]
# The provider's `check_supported`: raises ValueError when the cluster can never host it.
CapacityCheck = Callable[[Workload], None]
EnvironmentCheck = Callable[[dict[str, str] | None], None]  # raises InvalidParameter


def check_endpoint_name(name: str, *, shared: bool = False) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidParameter(
            f"endpoint name {name!r} is invalid: use 1-63 letters, digits, '-' or '_'"
        )
    if name.startswith(SHARED_PREFIX) and not shared:
        raise InvalidParameter(
            f"endpoint names starting with {SHARED_PREFIX!r} are reserved for "
            "platform-provided endpoints; choose another name"
        )


def default_entity_name(model_name: str, version: str) -> str:
    """Databricks' default served-entity name: `<name>-<version>`, where a dotted (Unity
    Catalog style, `catalog.schema.model`) name contributes its last part only."""
    return f"{model_name.rsplit('.', 1)[-1]}-{version}"


def normalize_config(
    config: EndpointCoreConfigInput | None,
    *,
    endpoint_id: str,
    version: int,
    creator: str,
    now_ms: int,
    resolve_model: ModelResolver,
    check_capacity: CapacityCheck,
    check_environment: EnvironmentCheck,
    defaults: WorkerDefaults,
    chunk_size: ChunkSize,
    current: EndpointConfig | None = None,
    placement_of: PlacementOf | None = None,
) -> EndpointConfig:
    """`current`: the live config an update replaces (its apps run until the update is
    done, so they count against the cluster's capacity too). `placement_of`: where each
    entity runs when the endpoint's workspace lives in a cloud."""
    if config is None:
        raise InvalidParameter("config is required: give config.served_entities")
    entities = config.entities()
    if not entities:
        raise InvalidParameter("config.served_entities must name at least one model to serve")
    if len(entities) > MAX_SERVED_ENTITIES:
        raise InvalidParameter(
            f"an endpoint serves at most {MAX_SERVED_ENTITIES} entities; got {len(entities)}"
        )
    for entity in entities:
        check_environment(entity.environment_vars)
    served = [
        _normalize_entity(e, endpoint_id, creator, now_ms, resolve_model, defaults, chunk_size)
        for e in entities
    ]
    names = [e.name for e in served]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidParameter(
            f"served entity names must be unique; repeated: {', '.join(duplicates)} "
            "(set `name` on each served entity)"
        )
    _check_capacity(served, current, check_capacity, defaults, placement_of)
    return EndpointConfig(
        config_version=version,
        served_entities=served,
        traffic_config=_traffic(config, names),
        start_time=now_ms,
    )


def _normalize_entity(
    entity: ServedEntityInput,
    endpoint_id: str,
    creator: str,
    now_ms: int,
    resolve_model: ModelResolver,
    defaults: WorkerDefaults,
    chunk_size: ChunkSize,
) -> ServedEntity:
    model = resolve_model(entity.entity_name, entity.entity_version or "1")
    name = entity.name or default_entity_name(model.name, model.version)
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidParameter(
            f"served entity name {name!r} is invalid: use 1-63 letters, digits, '-' or '_'"
        )
    workload_type = entity.workload_type or "CPU"
    if workload_type not in WORKLOAD_TYPES:
        raise InvalidParameter(
            f"served entity {name!r}: unknown workload_type {workload_type!r}; "
            f"choose one of {', '.join(WORKLOAD_TYPES)}"
        )
    placed = ServedEntity(
        name=name,
        legacy_served_model=entity.legacy,
        entity_name=model.name,
        entity_version=model.version,
        workload_type=workload_type,
        scale_to_zero_enabled=entity.scale_to_zero_enabled,
        environment_vars=entity.environment_vars,
        placement=entity.placement,
        creator=creator,
        creation_timestamp=now_ms,
        model_family=model.family,
        model_source=model.source,
        app_name="",  # derived from the rest, below
        **_capacity(name, entity, model, defaults, chunk_size),
    )
    return placed.model_copy(update={"app_name": app_name(endpoint_id, placed)})


def _check_capacity(
    served: list[ServedEntity],
    current: EndpointConfig | None,
    check_capacity: CapacityCheck,
    defaults: WorkerDefaults,
    placement_of: PlacementOf | None = None,
) -> None:
    """The whole config must fit the cluster at once: every entity's replicas together.
    An update rolls: its new apps start beside the live ones, which stop only once every
    new app runs, so the live apps it replaces count too (an entity whose app the update
    keeps counts once). What other endpoints hold is not counted: that is a wait, which
    the entity's state message explains, not a refusal."""
    workload = hosted_workload(served, defaults, placement_of=placement_of)
    try:
        check_capacity(workload)
    except ValueError as exc:
        raise InvalidParameter(f"this config cannot be hosted: {exc}") from None
    kept = {e.app_name for e in served}
    replaced = [e for e in (current.served_entities if current else []) if e.app_name not in kept]
    if not replaced:
        return
    try:
        check_capacity(
            workload_union(
                workload,
                hosted_workload(replaced, defaults, label=" (live)", placement_of=placement_of),
            )
        )
    except ValueError as exc:
        raise InvalidParameter(
            "this config fits on its own, but an update runs it beside the live config until "
            f"every new served entity is ready, and together they cannot be hosted: {exc}. "
            "Choose a config that fits beside the live one, or delete the endpoint and "
            "create it anew with this config"
        ) from None


def _capacity(
    name: str,
    entity: ServedEntityInput,
    model: ResolvedModel,
    defaults: WorkerDefaults,
    chunk_size: ChunkSize,
) -> dict[str, Any]:
    low, high = entity.min_provisioned_throughput, entity.max_provisioned_throughput
    units = entity.provisioned_model_units
    if units is not None:
        return _model_units(name, entity, model, units, chunk_size)
    provisioned = bool(low or high)
    if provisioned and entity.workload_size is not None:
        raise InvalidParameter(
            f"served entity {name!r}: give workload_size or provisioned throughput "
            "(min/max_provisioned_throughput), not both"
        )
    if not provisioned:
        size = entity.workload_size or "Small"
        replicas = replicas_for_size(size, defaults)
        return {
            "workload_size": size,
            "provisioned_model_units": None,
            "min_provisioned_throughput": None,
            "max_provisioned_throughput": None,
            "provisioned_chunks": 0,
            "min_replicas": 0 if entity.scale_to_zero_enabled else replicas,
            "max_replicas": replicas,
        }
    chunk = chunk_size(model.family, model.name, model.version)
    low, high = low or 0, high or low or 0
    for label, value in (("min", low), ("max", high)):
        if value % chunk:
            raise InvalidParameter(
                f"served entity {name!r}: {label}_provisioned_throughput {value} is not a "
                f"multiple of the model's throughput chunk size {chunk} tokens/s; "
                f"use {value // chunk * chunk or chunk} or {(value // chunk + 1) * chunk}"
            )
    if high == 0 or low > high:
        raise InvalidParameter(
            f"served entity {name!r}: need 0 <= min_provisioned_throughput ({low}) <= "
            f"max_provisioned_throughput ({high}) and max > 0"
        )
    min_chunks = 0 if entity.scale_to_zero_enabled else low // chunk
    return {
        "workload_size": None,
        "provisioned_model_units": None,
        "min_provisioned_throughput": low,
        "max_provisioned_throughput": high,
        "provisioned_chunks": high // chunk,
        "min_replicas": min_chunks,
        "max_replicas": high // chunk,
    }


def _model_units(
    name: str, entity: ServedEntityInput, model: ResolvedModel, units: int, chunk_size: ChunkSize
) -> dict[str, Any]:
    """Model units: one throughput chunk each, all held all the time (min = max), billed as
    provisioned chunks are."""
    others = (
        entity.workload_size,
        entity.min_provisioned_throughput,
        entity.max_provisioned_throughput,
    )
    if any(value is not None for value in others) or entity.scale_to_zero_enabled:
        raise InvalidParameter(
            f"served entity {name!r}: provisioned_model_units holds that many units all the "
            "time; give it alone (no workload_size, min/max_provisioned_throughput or "
            "scale_to_zero_enabled)"
        )
    throughput = units * chunk_size(model.family, model.name, model.version)
    return {
        "workload_size": None,
        "provisioned_model_units": units,
        "min_provisioned_throughput": throughput,
        "max_provisioned_throughput": throughput,
        "provisioned_chunks": units,
        "min_replicas": units,
        "max_replicas": units,
    }


def _traffic(config: EndpointCoreConfigInput, names: list[str]) -> TrafficConfig:
    if config.traffic_config is None or not config.traffic_config.routes:
        if len(names) > 1:
            raise InvalidParameter(
                "traffic_config.routes is required when an endpoint serves several entities"
            )
        return TrafficConfig(routes=[Route(served_entity_name=names[0], traffic_percentage=100)])
    routes: list[Route] = []
    seen: set[str] = set()
    for route in config.traffic_config.routes:
        target = route.target
        if target not in names:
            raise InvalidParameter(
                f"traffic route names served entity {target!r}, which this config does not "
                f"serve; served entities: {', '.join(names)}"
            )
        if target in seen:
            raise InvalidParameter(f"served entity {target!r} has more than one traffic route")
        seen.add(target)
        routes.append(Route(served_entity_name=target, traffic_percentage=route.traffic_percentage))
    total = sum(r.traffic_percentage for r in routes)
    if total != 100:
        raise InvalidParameter(f"traffic percentages must sum to 100; they sum to {total}")
    return TrafficConfig(routes=routes)
