"""Management API for serving endpoints (`/api/2.0/serving-endpoints`), Databricks shapes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from control_plane.api.deps import EndpointsDep, PlaneDep
from control_plane.auth import Level
from control_plane.endpoints import views
from control_plane.endpoints.schemas import (
    AiGatewayInput,
    CreateEndpoint,
    EndpointCoreConfigInput,
    PatchTags,
    PutRateLimits,
)

router = APIRouter(prefix="/api/2.0/serving-endpoints", tags=["serving-endpoints"])
Json = dict[str, Any]


# mlflow's deployment client creates and lists at ".../serving-endpoints/" (trailing
# slash). Serve that path itself: a redirect built from the request URL points at http://
# behind a TLS-terminating proxy, and requests drops the Authorization header on it.
@router.post("", response_model=Json)
@router.post("/", response_model=Json, include_in_schema=False)
def create_endpoint(body: CreateEndpoint, endpoints: EndpointsDep, plane: PlaneDep) -> Json:
    endpoint = endpoints.create(body)
    endpoints.session.commit()
    plane.reconciler.kick()
    return views.detailed(endpoint, Level.CAN_MANAGE.name)


@router.get("", response_model=Json)
@router.get("/", response_model=Json, include_in_schema=False)
def list_endpoints(endpoints: EndpointsDep) -> Json:
    return {"endpoints": [views.summary(e) for e in endpoints.listed()]}


@router.get("/{name}", response_model=Json)
def get_endpoint(name: str, endpoints: EndpointsDep) -> Json:
    endpoint, level = endpoints.by_name(name)
    return views.detailed(endpoint, level.name)


@router.delete("/{name}", response_model=Json)
def delete_endpoint(name: str, endpoints: EndpointsDep, plane: PlaneDep) -> Json:
    endpoints.delete(name)
    endpoints.session.commit()
    plane.reconciler.kick()
    return {}


@router.put("/{name}/config", response_model=Json)
def update_config(
    name: str, body: EndpointCoreConfigInput, endpoints: EndpointsDep, plane: PlaneDep
) -> Json:
    endpoint = endpoints.update_config(name, body)
    endpoints.session.commit()
    plane.reconciler.kick()
    return views.detailed(endpoint, Level.CAN_MANAGE.name)


@router.patch("/{name}/tags", response_model=Json)
def patch_tags(name: str, body: PatchTags, endpoints: EndpointsDep) -> Json:
    tags = endpoints.patch_tags(name, body)
    endpoints.session.commit()
    return {"tags": tags}


@router.put("/{name}/ai-gateway", response_model=Json)
def put_ai_gateway(name: str, body: AiGatewayInput, endpoints: EndpointsDep) -> Json:
    gateway = endpoints.put_ai_gateway(name, body)
    endpoints.session.commit()
    return gateway


@router.put("/{name}/rate-limits", response_model=Json)
def put_rate_limits(name: str, body: PutRateLimits, endpoints: EndpointsDep) -> Json:
    limits = endpoints.put_rate_limits(name, body.rate_limits)
    endpoints.session.commit()
    return {"rate_limits": limits}
