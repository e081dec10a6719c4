"""Request bodies of the management API (Databricks Model Serving 2.0 shapes).

Unknown fields are ignored, as the Databricks service does, so newer SDKs keep working;
legacy `served_models` are accepted and mapped onto `served_entities`. The AI-gateway and
tag shapes are shared with what is stored and shown (`endpoints.ai_gateway`,
`endpoints.config`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from control_plane.endpoints.ai_gateway import AiGatewayConfig, RateLimit
from control_plane.endpoints.config import EndpointTag, EntityPlacement, Task, WorkloadSize

MAX_MODEL_UNITS = 1000


class _Input(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ServedEntityInput(_Input):
    name: str | None = Field(
        default=None,
        description="default <entity_name>-<entity_version>; of a three-part name such as "
        "catalog.schema.model, its last part: model-<entity_version>",
    )
    entity_name: str
    entity_version: str | None = None
    workload_size: WorkloadSize | None = None
    workload_type: str | None = None
    scale_to_zero_enabled: bool = False
    min_provisioned_throughput: int | None = Field(default=None, ge=0)
    max_provisioned_throughput: int | None = Field(default=None, ge=0)
    provisioned_model_units: int | None = Field(
        default=None,
        ge=1,
        le=MAX_MODEL_UNITS,
        description="provisioned throughput in model units: one unit is one throughput chunk "
        "(GET get-model-optimization-info gives its tokens/s), held all the time",
    )
    environment_vars: dict[str, str] | None = None
    placement: EntityPlacement | None = Field(
        default=None, description="moeserve extension: fallback regions and instance types"
    )
    # set when the entity came from the legacy `served_models` (never from the request body)
    _legacy: bool = PrivateAttr(default=False)

    @property
    def legacy(self) -> bool:
        return self._legacy


class ServedModelInput(_Input):
    """Legacy shape: `model_name` / `model_version`."""

    name: str | None = None
    model_name: str
    model_version: str
    workload_size: WorkloadSize | None = None
    workload_type: str | None = None
    scale_to_zero_enabled: bool = False
    environment_vars: dict[str, str] | None = None

    def as_entity(self) -> ServedEntityInput:
        entity = ServedEntityInput(
            name=self.name,
            entity_name=self.model_name,
            entity_version=self.model_version,
            workload_size=self.workload_size,
            workload_type=self.workload_type,
            scale_to_zero_enabled=self.scale_to_zero_enabled,
            environment_vars=self.environment_vars,
        )
        entity._legacy = True
        return entity


class RouteInput(_Input):
    served_entity_name: str | None = None
    served_model_name: str | None = None
    traffic_percentage: int = Field(ge=0, le=100)

    @property
    def target(self) -> str | None:
        return self.served_entity_name or self.served_model_name


class TrafficConfigInput(_Input):
    routes: list[RouteInput] = Field(default_factory=list)


class EndpointCoreConfigInput(_Input):
    name: str | None = None
    served_entities: list[ServedEntityInput] | None = None
    served_models: list[ServedModelInput] | None = None
    traffic_config: TrafficConfigInput | None = None

    def entities(self) -> list[ServedEntityInput]:
        legacy = [m.as_entity() for m in self.served_models or []]
        return [*(self.served_entities or []), *legacy]


class CreateEndpoint(_Input):
    name: str
    config: EndpointCoreConfigInput | None = None
    ai_gateway: AiGatewayConfig | None = None
    rate_limits: list[RateLimit] | None = None
    tags: list[EndpointTag] | None = None
    description: str | None = Field(default=None, max_length=4096)
    route_optimized: bool = False
    task: Task = Field(
        default=Task.CHAT,
        description="moeserve extension: what the endpoint answers (chat, completions or "
        "embeddings); queries of another kind are refused",
    )


class PtServedEntityInput(_Input):
    """A served entity of a provisioned-throughput endpoint (`/serving-endpoints/pt`)."""

    name: str | None = None
    entity_name: str
    entity_version: str | None = None
    provisioned_model_units: int = Field(ge=1, le=MAX_MODEL_UNITS)
    burst_scaling_enabled: bool | None = Field(
        default=None, description="accepted; moeserve holds exactly the units provisioned"
    )

    def as_entity(self) -> ServedEntityInput:
        return ServedEntityInput(
            name=self.name,
            entity_name=self.entity_name,
            entity_version=self.entity_version,
            provisioned_model_units=self.provisioned_model_units,
        )


class PtEndpointCoreConfigInput(_Input):
    served_entities: list[PtServedEntityInput] = Field(min_length=1)
    traffic_config: TrafficConfigInput | None = None

    def as_config(self) -> EndpointCoreConfigInput:
        return EndpointCoreConfigInput(
            served_entities=[e.as_entity() for e in self.served_entities],
            traffic_config=self.traffic_config,
        )


class CreatePtEndpoint(_Input):
    """`POST /api/2.0/serving-endpoints/pt` (the SDK's create_provisioned_throughput_endpoint)."""

    name: str
    config: PtEndpointCoreConfigInput
    ai_gateway: AiGatewayConfig | None = None
    tags: list[EndpointTag] | None = None

    def as_create(self) -> CreateEndpoint:
        return CreateEndpoint(
            name=self.name,
            config=self.config.as_config(),
            ai_gateway=self.ai_gateway,
            tags=self.tags,
        )


class UpdatePtConfig(_Input):
    config: PtEndpointCoreConfigInput


class PatchTags(_Input):
    add_tags: list[EndpointTag] = Field(default_factory=list)
    delete_tags: list[str] = Field(default_factory=list)


class PutRateLimits(_Input):
    rate_limits: list[RateLimit] = Field(default_factory=list)


PermissionLevel = Literal["CAN_MANAGE", "CAN_QUERY", "CAN_VIEW"]


class AccessControlEntry(_Input):
    user_name: str | None = None
    group_name: str | None = None
    service_principal_name: str | None = None
    permission_level: PermissionLevel


class PermissionsInput(_Input):
    access_control_list: list[AccessControlEntry] = Field(default_factory=list)
