"""Per-endpoint read-only extras: metrics, OpenAPI, logs, provisioned-throughput sizing."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from control_plane.api.deps import CallerDep, EndpointsDep, PlaneDep, SessionDep
from control_plane.auth import Level
from control_plane.db.models import Endpoint
from control_plane.endpoints.config import ServedEntity
from control_plane.endpoints.metrics import endpoint_metrics
from control_plane.errors import NotFound
from control_plane.query.openapi import query_openapi
from control_plane.registry import resolve

router = APIRouter(prefix="/api/2.0/serving-endpoints", tags=["serving-endpoints"])
PROMETHEUS_TEXT: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/plain": {"schema": {"type": "string"}}}}
}


class ModelOptimizationInfo(BaseModel):
    optimizable: bool
    throughput_chunk_size: int = Field(description="tokens/s one provisioned chunk buys")
    model_type: str


class ServerLogs(BaseModel):
    logs: str


@router.get("/get-model-optimization-info/{model}/{version}", response_model=ModelOptimizationInfo)
def model_optimization_info(
    model: str, version: str, session: SessionDep, caller: CallerDep, plane: PlaneDep
) -> ModelOptimizationInfo:
    """The throughput chunk size comes from the rate card in force (`billing/ratecards/`)."""
    resolved = resolve(
        session, caller.workspace_id, model, version, system_models=plane.settings.system_models
    )
    return ModelOptimizationInfo(
        optimizable=True,
        throughput_chunk_size=plane.chunk_size(resolved.family, resolved.name, resolved.version),
        model_type=resolved.family,
    )


@router.get("/{name}/metrics", response_class=PlainTextResponse, responses=PROMETHEUS_TEXT)
def metrics(name: str, endpoints: EndpointsDep, plane: PlaneDep) -> str:
    endpoint, _ = endpoints.by_name(name)
    names = endpoint.config.app_names if endpoint.config is not None else set()
    text = endpoint_metrics(endpoint, {n: plane.provider.status(n) for n in names})
    if plane.gateway is not None:  # this process's query metrics of the endpoint
        text += plane.gateway.metrics.endpoint_text(endpoint.id, endpoints.caller.workspace_id)
    return text


@router.get("/{name}/openapi", response_model=dict[str, Any])
def openapi(name: str, endpoints: EndpointsDep, plane: PlaneDep) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the endpoint's query interface."""
    endpoint, _ = endpoints.by_name(name, Level.CAN_QUERY)
    return query_openapi(endpoint.name, endpoint.task, plane.settings.base_url())


def _served_entity(endpoint: Endpoint, served: str) -> ServedEntity:
    for config in (endpoint.config, endpoint.pending_config):
        entity = config.entity(served) if config is not None else None
        if entity is not None:
            return entity
    raise NotFound(f"endpoint {endpoint.name!r} serves no entity named {served!r}")


@router.get("/{name}/served-models/{served}/logs", response_model=ServerLogs)
def logs(name: str, served: str, endpoints: EndpointsDep, plane: PlaneDep) -> ServerLogs:
    endpoint, _ = endpoints.by_name(name, Level.CAN_MANAGE)
    entity = _served_entity(endpoint, served)
    return ServerLogs(logs=plane.provider.logs(entity.app_name))


@router.get("/{name}/served-models/{served}/build-logs", response_model=ServerLogs)
def build_logs(name: str, served: str, endpoints: EndpointsDep) -> ServerLogs:
    """There is no image build: the log says what the deployment was built from and its
    last state."""
    endpoint, _ = endpoints.by_name(name, Level.CAN_MANAGE)
    entity = _served_entity(endpoint, served)
    state = endpoint.deployments.state(entity.app_name)
    source = entity.model_source
    lines = [
        f"served entity {served}: {entity.entity_name} version {entity.entity_version}",
        f"weights: {source.checkpoint or 'preset ' + str(source.preset)}",
        f"workload: {entity.workload_type}, replicas {entity.min_replicas}..{entity.max_replicas}",
        f"Serve application: {entity.app_name}",
        f"state: {state.deployment} {state.deployment_state_message}".rstrip(),
    ]
    return ServerLogs(logs="\n".join(lines) + "\n")
