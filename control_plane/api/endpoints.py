"""Management API for serving endpoints (`/api/2.0/serving-endpoints`), Databricks shapes."""

from __future__ import annotations

from fastapi import APIRouter

from control_plane.api.deps import EndpointsDep, PlaneDep
from control_plane.auth import Level
from control_plane.endpoints.ai_gateway import AiGatewayConfig
from control_plane.endpoints.public import (
    Deleted,
    EndpointTags,
    RateLimits,
    ServingEndpoint,
    ServingEndpointDetailed,
    ServingEndpointList,
)
from control_plane.endpoints.schemas import (
    CreateEndpoint,
    CreatePtEndpoint,
    EndpointCoreConfigInput,
    PatchTags,
    PutRateLimits,
    UpdatePtConfig,
)

# Databricks omits absent fields; so do the responses here.
router = APIRouter(prefix="/api/2.0/serving-endpoints", tags=["serving-endpoints"])


@router.post("/pt", response_model=ServingEndpointDetailed, response_model_exclude_none=True)
def create_pt_endpoint(
    body: CreatePtEndpoint, endpoints: EndpointsDep, plane: PlaneDep
) -> ServingEndpointDetailed:
    """A provisioned-throughput endpoint in model units (Databricks' current PT API)."""
    return create_endpoint(body.as_create(), endpoints, plane)


@router.put(
    "/pt/{name}/config", response_model=ServingEndpointDetailed, response_model_exclude_none=True
)
def update_pt_config(
    name: str, body: UpdatePtConfig, endpoints: EndpointsDep, plane: PlaneDep
) -> ServingEndpointDetailed:
    """New model units (or entities) for a provisioned-throughput endpoint; it rolls out as
    any config update does."""
    return update_config(name, body.config.as_config(), endpoints, plane)


# mlflow's deployment client creates and lists at ".../serving-endpoints/" (trailing
# slash). Serve that path itself: a redirect built from the request URL points at http://
# behind a TLS-terminating proxy, and requests drops the Authorization header on it.
@router.post("", response_model=ServingEndpointDetailed, response_model_exclude_none=True)
@router.post(
    "/",
    response_model=ServingEndpointDetailed,
    include_in_schema=False,
    response_model_exclude_none=True,
)
def create_endpoint(
    body: CreateEndpoint, endpoints: EndpointsDep, plane: PlaneDep
) -> ServingEndpointDetailed:
    endpoint = endpoints.create(body)
    endpoints.session.commit()
    plane.reconciler.kick()
    return ServingEndpointDetailed.of(endpoint, Level.CAN_MANAGE.name)


@router.get("", response_model=ServingEndpointList, response_model_exclude_none=True)
@router.get(
    "/",
    response_model=ServingEndpointList,
    include_in_schema=False,
    response_model_exclude_none=True,
)
def list_endpoints(endpoints: EndpointsDep) -> ServingEndpointList:
    return ServingEndpointList(endpoints=[ServingEndpoint.of(e) for e in endpoints.listed()])


@router.get("/{name}", response_model=ServingEndpointDetailed, response_model_exclude_none=True)
def get_endpoint(name: str, endpoints: EndpointsDep) -> ServingEndpointDetailed:
    endpoint, level = endpoints.by_name(name)
    return ServingEndpointDetailed.of(endpoint, level.name)


@router.delete("/{name}", response_model=Deleted)
def delete_endpoint(name: str, endpoints: EndpointsDep, plane: PlaneDep) -> Deleted:
    endpoints.delete(name)
    endpoints.session.commit()
    plane.reconciler.kick()
    return Deleted()


@router.put(
    "/{name}/config", response_model=ServingEndpointDetailed, response_model_exclude_none=True
)
def update_config(
    name: str, body: EndpointCoreConfigInput, endpoints: EndpointsDep, plane: PlaneDep
) -> ServingEndpointDetailed:
    endpoint = endpoints.update_config(name, body)
    endpoints.session.commit()
    plane.reconciler.kick()
    return ServingEndpointDetailed.of(endpoint, Level.CAN_MANAGE.name)


@router.patch("/{name}/tags", response_model=EndpointTags, response_model_exclude_none=True)
def patch_tags(name: str, body: PatchTags, endpoints: EndpointsDep) -> EndpointTags:
    tags = endpoints.patch_tags(name, body)
    endpoints.session.commit()
    return EndpointTags(tags=tags)


@router.put("/{name}/ai-gateway", response_model=AiGatewayConfig, response_model_exclude_none=True)
def put_ai_gateway(name: str, body: AiGatewayConfig, endpoints: EndpointsDep) -> AiGatewayConfig:
    gateway = endpoints.put_ai_gateway(name, body)
    endpoints.session.commit()
    return gateway


@router.put("/{name}/rate-limits", response_model=RateLimits, response_model_exclude_none=True)
def put_rate_limits(name: str, body: PutRateLimits, endpoints: EndpointsDep) -> RateLimits:
    limits = endpoints.put_rate_limits(name, body.rate_limits)
    endpoints.session.commit()
    return RateLimits(rate_limits=limits)
