"""Per-endpoint read-only extras: metrics, OpenAPI, logs, provisioned-throughput sizing."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from control_plane.api.deps import CallerDep, EndpointsDep, PlaneDep, SessionDep
from control_plane.auth import Level
from control_plane.endpoints.metrics import endpoint_metrics
from control_plane.endpoints.openapi import query_openapi
from control_plane.errors import NotFound
from control_plane.registry import resolve

router = APIRouter(prefix="/api/2.0/serving-endpoints", tags=["serving-endpoints"])
Json = dict[str, Any]


@router.get("/get-model-optimization-info/{model}/{version}", response_model=Json)
def model_optimization_info(
    model: str, version: str, session: SessionDep, caller: CallerDep, plane: PlaneDep
) -> Json:
    """The throughput chunk size comes from the rate card in force (`billing/ratecards/`)."""
    resolved = resolve(session, caller.workspace_id, model, version)
    return {
        "optimizable": True,
        "throughput_chunk_size": plane.chunk_size(resolved.family, resolved.name, resolved.version),
        "model_type": resolved.family,
    }


@router.get("/{name}/metrics", response_class=PlainTextResponse)
def metrics(name: str, endpoints: EndpointsDep, plane: PlaneDep) -> str:
    endpoint, _ = endpoints.by_name(name)
    names = [e["app_name"] for e in (endpoint.config or {}).get("served_entities", [])]
    text = endpoint_metrics(endpoint, {n: plane.provider.status(n) for n in names})
    if plane.gateway is not None:  # this process's query metrics of the endpoint
        text += plane.gateway.metrics.endpoint_text(endpoint.name)
    return text


@router.get("/{name}/openapi", response_model=Json)
def openapi(name: str, endpoints: EndpointsDep, plane: PlaneDep) -> Json:
    endpoint, _ = endpoints.by_name(name, Level.CAN_QUERY)
    return query_openapi(endpoint.name, plane.settings.base_url())


def _served_entity(endpoint_config: Any, served: str, endpoint_name: str) -> dict[str, Any]:
    for config in endpoint_config:
        for entity in (config or {}).get("served_entities", []):
            if entity["name"] == served:
                return dict(entity)
    raise NotFound(f"endpoint {endpoint_name!r} serves no entity named {served!r}")


@router.get("/{name}/served-models/{served}/logs", response_model=Json)
def logs(name: str, served: str, endpoints: EndpointsDep, plane: PlaneDep) -> Json:
    endpoint, _ = endpoints.by_name(name, Level.CAN_MANAGE)
    entity = _served_entity((endpoint.config, endpoint.pending_config), served, name)
    return {"logs": plane.provider.logs(entity["app_name"])}


@router.get("/{name}/served-models/{served}/build-logs", response_model=Json)
def build_logs(name: str, served: str, endpoints: EndpointsDep) -> Json:
    """There is no image build: the log says what the deployment was built from and its
    last state."""
    endpoint, _ = endpoints.by_name(name, Level.CAN_MANAGE)
    entity = _served_entity((endpoint.config, endpoint.pending_config), served, name)
    state = endpoint.deployments.get(entity["app_name"], {})
    source = entity["model_source"]
    lines = [
        f"served entity {served}: {entity['entity_name']} version {entity['entity_version']}",
        f"weights: {source.get('checkpoint') or 'preset ' + str(source.get('preset'))}",
        f"workload: {entity['workload_type']}, replicas "
        f"{entity['min_replicas']}..{entity['max_replicas']}",
        f"Serve application: {entity['app_name']}",
        f"state: {state.get('deployment', 'DEPLOYMENT_CREATING')} "
        f"{state.get('deployment_state_message', '')}".rstrip(),
    ]
    return {"logs": "\n".join(lines) + "\n"}
