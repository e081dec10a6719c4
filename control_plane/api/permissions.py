"""`/api/2.0/permissions/serving-endpoints/{endpoint_id}` (by endpoint id, not name)."""

from __future__ import annotations

from fastapi import APIRouter

from control_plane.api.deps import EndpointsDep
from control_plane.auth import Level
from control_plane.auth.acl import EndpointPermissions, acl_view, set_acl
from control_plane.endpoints.schemas import PermissionsInput

router = APIRouter(prefix="/api/2.0/permissions/serving-endpoints", tags=["permissions"])


@router.get("/{endpoint_id}", response_model=EndpointPermissions)
def get_permissions(endpoint_id: str, endpoints: EndpointsDep) -> EndpointPermissions:
    endpoint, _ = endpoints.by_id(endpoint_id, Level.CAN_MANAGE)
    return acl_view(endpoints.session, endpoint)


@router.put("/{endpoint_id}", response_model=EndpointPermissions)
def put_permissions(
    endpoint_id: str, body: PermissionsInput, endpoints: EndpointsDep
) -> EndpointPermissions:
    endpoint, _ = endpoints.by_id(endpoint_id, Level.CAN_MANAGE)
    set_acl(endpoints.session, endpoint, body.access_control_list, replace=True)
    endpoints.session.flush()
    view = acl_view(endpoints.session, endpoint)
    endpoints.session.commit()
    return view


@router.patch("/{endpoint_id}", response_model=EndpointPermissions)
def patch_permissions(
    endpoint_id: str, body: PermissionsInput, endpoints: EndpointsDep
) -> EndpointPermissions:
    endpoint, _ = endpoints.by_id(endpoint_id, Level.CAN_MANAGE)
    set_acl(endpoints.session, endpoint, body.access_control_list, replace=False)
    endpoints.session.flush()
    view = acl_view(endpoints.session, endpoint)
    endpoints.session.commit()
    return view
