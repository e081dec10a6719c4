"""An endpoint's config as stored and deployed: its served entities (what each serves and at
which capacity), the traffic split, and the endpoint's task and tags.

These are the normalized, validated shapes `endpoints.validation` builds from a request
and the reconciler and the query path read; they are stored through `PydanticJson`
columns, so a row reads back as these models. Fields marked internal are never shown on the
management API (`endpoints.public` chooses what is).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from deploy.providers.placement import MAX_FALLBACKS
from workers.model.source import ModelSource

WorkloadSize = Literal["Small", "Medium", "Large"]


class Task(StrEnum):
    """What an endpoint answers, as Databricks reports it; a query of another kind is a 400."""

    CHAT = "llm/v1/chat"
    COMPLETIONS = "llm/v1/completions"
    EMBEDDINGS = "llm/v1/embeddings"


class EndpointTag(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    key: str = Field(min_length=1, max_length=255)
    value: str | None = Field(default=None, max_length=255)


class EntityPlacement(BaseModel):
    """moeserve's extension to a served entity (not a Databricks field): where its node
    group may fall back to when the cloud refuses capacity or quota. Ignored in a `local`
    workspace. Regions after the workspace's own, and instance types pinned in the order to
    try (none: the catalog's cheapest fitting shape, then the next cheapest, ...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fallback_regions: tuple[Annotated[str, Field(pattern=r"^[a-z0-9-]{2,32}$")], ...] = Field(
        default=(), max_length=MAX_FALLBACKS
    )
    instance_types: tuple[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{2,64}$")], ...] = Field(
        default=(), max_length=MAX_FALLBACKS
    )


class ServedEntity(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    entity_name: str
    entity_version: str
    workload_type: str
    workload_size: WorkloadSize | None = None
    scale_to_zero_enabled: bool = False
    environment_vars: dict[str, str] | None = None
    creator: str
    creation_timestamp: int = Field(description="epoch milliseconds")
    min_provisioned_throughput: int | None = None
    max_provisioned_throughput: int | None = None
    provisioned_model_units: int | None = None
    placement: EntityPlacement | None = None
    # moeserve bookkeeping: the caller named it in the legacy `served_models` (it is shown
    # there too, as Databricks does)
    legacy_served_model: bool = False
    # internal: how the entity is served
    model_family: str = Field(description="internal: dbrx | mixtral (prices the usage)")
    model_source: ModelSource = Field(description="internal: the weights a replica loads")
    app_name: str = Field(description="internal: its Ray Serve application")
    min_replicas: int = Field(ge=0, description="internal")
    max_replicas: int = Field(ge=0, description="internal")
    provisioned_chunks: int = Field(default=0, ge=0, description="internal: chunks at max")

    @property
    def provisioned(self) -> bool:
        return self.provisioned_chunks > 0


class Route(BaseModel):
    model_config = ConfigDict(frozen=True)

    served_entity_name: str
    traffic_percentage: int = Field(ge=0, le=100)


class TrafficConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    routes: list[Route]


class EndpointConfig(BaseModel):
    """One version of an endpoint's config: live (`config`) or rolling out (`pending_config`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config_version: int = Field(ge=1)
    served_entities: list[ServedEntity]
    traffic_config: TrafficConfig
    start_time: int = Field(description="epoch milliseconds the version was requested")

    def entity(self, name: str) -> ServedEntity | None:
        return next((e for e in self.served_entities if e.name == name), None)

    @property
    def app_names(self) -> set[str]:
        return {e.app_name for e in self.served_entities}
