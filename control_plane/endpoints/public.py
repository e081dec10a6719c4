"""What the management API shows of an endpoint (Databricks `ServingEndpointDetailed`, the
list summaries, tags, rate limits), built from the stored models by `model_validate`.

Internal fields of a served entity (its model source, Serve application, replica bounds)
never appear; the routes drop fields that are None, as the Databricks service does.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from control_plane.db.models import Endpoint
from control_plane.endpoints.ai_gateway import AiGatewayConfig, RateLimit
from control_plane.endpoints.config import (
    EndpointConfig,
    EndpointTag,
    EntityPlacement,
    ServedEntity,
    TrafficConfig,
    WorkloadSize,
)
from control_plane.endpoints.environment import redacted
from control_plane.endpoints.states import EndpointState, ServedEntityState
from control_plane.ids import to_millis

_INTERNAL = {"model_family", "model_source", "app_name", "min_replicas", "max_replicas"}
_INTERNAL |= {"provisioned_chunks", "legacy_served_model"}


class ServedEntityPublic(BaseModel):
    name: str
    entity_name: str
    entity_version: str
    workload_type: str
    workload_size: WorkloadSize | None = None
    scale_to_zero_enabled: bool
    environment_vars: dict[str, str] | None = None
    creator: str
    creation_timestamp: int
    min_provisioned_throughput: int | None = None
    max_provisioned_throughput: int | None = None
    provisioned_model_units: int | None = None
    placement: EntityPlacement | None = None
    state: ServedEntityState

    @classmethod
    def of(cls, entity: ServedEntity, state: ServedEntityState) -> ServedEntityPublic:
        shown = entity.model_dump(exclude=_INTERNAL)
        shown["environment_vars"] = redacted(entity.environment_vars)  # values never shown
        return cls.model_validate({**shown, "state": state})


class ServedModelPublic(BaseModel):
    """An entity the caller named in the legacy `served_models`, shown in that shape too."""

    name: str
    model_name: str
    model_version: str
    workload_type: str
    workload_size: WorkloadSize | None = None
    scale_to_zero_enabled: bool
    environment_vars: dict[str, str] | None = None
    creator: str
    creation_timestamp: int
    state: ServedEntityState

    @classmethod
    def of(cls, entity: ServedEntityPublic) -> ServedModelPublic:
        shown = entity.model_dump(exclude={"entity_name", "entity_version"})
        return cls.model_validate(
            {**shown, "model_name": entity.entity_name, "model_version": entity.entity_version}
        )


class EndpointConfigPublic(BaseModel):
    config_version: int
    served_entities: list[ServedEntityPublic]
    served_models: list[ServedModelPublic] | None = Field(
        default=None, description="the entities given as legacy served_models, in that shape"
    )
    traffic_config: TrafficConfig


class PendingConfigPublic(EndpointConfigPublic):
    start_time: int = Field(description="epoch milliseconds the update was requested")


class _EndpointCommon(BaseModel):
    """Fields the detailed view and the list summary share."""

    name: str
    id: str
    creator: str
    creation_timestamp: int
    last_updated_timestamp: int
    state: EndpointState
    tags: list[EndpointTag]
    task: str | None = None
    description: str = ""
    ai_gateway: AiGatewayConfig | None = None


def _common(endpoint: Endpoint) -> dict[str, Any]:
    return {
        "name": endpoint.name,
        "id": endpoint.id,
        "creator": endpoint.creator,
        "creation_timestamp": to_millis(endpoint.created_at),
        "last_updated_timestamp": to_millis(endpoint.updated_at),
        "state": EndpointState(ready=endpoint.ready, config_update=endpoint.config_update),
        "tags": endpoint.tags,
        "task": endpoint.task,
        "description": endpoint.description,
        "ai_gateway": endpoint.ai_gateway,
    }


def _config(endpoint: Endpoint, config: EndpointConfig) -> dict[str, Any]:
    entities = [
        (e, ServedEntityPublic.of(e, endpoint.deployments.state(e.app_name)))
        for e in config.served_entities
    ]
    legacy = [ServedModelPublic.of(shown) for e, shown in entities if e.legacy_served_model]
    return {
        "config_version": config.config_version,
        "served_entities": [shown for _, shown in entities],
        "served_models": legacy or None,
        "traffic_config": config.traffic_config,
    }


class ServingEndpointDetailed(_EndpointCommon):
    permission_level: str = Field(description="the caller's: CAN_MANAGE, CAN_QUERY or CAN_VIEW")
    route_optimized: bool = False
    config: EndpointConfigPublic | None = Field(default=None, description="the live config")
    pending_config: PendingConfigPublic | None = Field(
        default=None, description="the config rolling out (or the last one that failed)"
    )

    @classmethod
    def of(cls, endpoint: Endpoint, permission_level: str) -> ServingEndpointDetailed:
        view = _common(endpoint)
        view["permission_level"] = permission_level
        view["route_optimized"] = endpoint.route_optimized
        if endpoint.config is not None:
            view["config"] = _config(endpoint, endpoint.config)
        if endpoint.pending_config is not None:
            pending = endpoint.pending_config
            view["pending_config"] = {
                **_config(endpoint, pending),
                "start_time": pending.start_time,
            }
        return cls.model_validate(view)


class ServedEntitySpec(BaseModel):
    name: str
    entity_name: str
    entity_version: str
    state: ServedEntityState


class EndpointConfigSummary(BaseModel):
    config_version: int
    served_entities: list[ServedEntitySpec]


class ServingEndpoint(_EndpointCommon):
    """An endpoint in the list: its live config (or the pending one, before the first)."""

    config: EndpointConfigSummary | None = None

    @classmethod
    def of(cls, endpoint: Endpoint) -> ServingEndpoint:
        view = _common(endpoint)
        live = endpoint.config or endpoint.pending_config
        if live is not None:
            view["config"] = {
                "config_version": live.config_version,
                "served_entities": [
                    {
                        "name": e.name,
                        "entity_name": e.entity_name,
                        "entity_version": e.entity_version,
                        "state": endpoint.deployments.state(e.app_name),
                    }
                    for e in live.served_entities
                ],
            }
        return cls.model_validate(view)


class ServingEndpointList(BaseModel):
    endpoints: list[ServingEndpoint]


class EndpointTags(BaseModel):
    tags: list[EndpointTag]


class RateLimits(BaseModel):
    rate_limits: list[RateLimit]


class Deleted(BaseModel):
    """The empty object a DELETE answers."""

    model_config = ConfigDict(extra="forbid")
