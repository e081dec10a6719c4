"""Endpoint access control lists: read, replace (PUT) and update (PATCH) direct grants."""

from __future__ import annotations

from pydantic import BaseModel
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from control_plane.db.models import Endpoint, EndpointPermission, Principal
from control_plane.endpoints.schemas import AccessControlEntry, PermissionLevel
from control_plane.errors import InvalidParameter

# ACL entry field -> principal kind
_NAME_FIELDS = {
    "user_name": "user",
    "group_name": "group",
    "service_principal_name": "service_principal",
}


class Permission(BaseModel):
    permission_level: PermissionLevel
    inherited: bool = False


class AccessControlResponse(BaseModel):
    user_name: str | None = None
    group_name: str | None = None
    service_principal_name: str | None = None
    all_permissions: list[Permission]


class EndpointPermissions(BaseModel):
    """Databricks `ServingEndpointPermissions`: the direct grants on one endpoint."""

    object_id: str
    object_type: str = "serving-endpoint"
    access_control_list: list[AccessControlResponse]


def acl_view(session: Session, endpoint: Endpoint) -> EndpointPermissions:
    rows = session.execute(
        select(EndpointPermission.level, Principal)
        .join(Principal, Principal.id == EndpointPermission.principal_id)
        .where(EndpointPermission.endpoint_id == endpoint.id)
        .order_by(Principal.kind, Principal.name)
    ).all()
    entries = []
    for level, principal in rows:
        field = next(f for f, kind in _NAME_FIELDS.items() if kind == principal.kind)
        entries.append(
            AccessControlResponse.model_validate(
                {field: principal.name, "all_permissions": [Permission(permission_level=level)]}
            )
        )
    return EndpointPermissions(
        object_id=f"/serving-endpoints/{endpoint.id}", access_control_list=entries
    )


def _principal(session: Session, workspace_id: str, entry: AccessControlEntry) -> Principal:
    given = [(f, getattr(entry, f)) for f in _NAME_FIELDS if getattr(entry, f)]
    if len(given) != 1:
        raise InvalidParameter(
            "each access control entry names exactly one of user_name, group_name, "
            "service_principal_name"
        )
    field, name = given[0]
    principal = session.scalars(
        select(Principal).where(
            Principal.workspace_id == workspace_id,
            Principal.kind == _NAME_FIELDS[field],
            Principal.name == name,
        )
    ).first()
    if principal is None:
        raise InvalidParameter(f"{field} {name!r} does not exist in this workspace")
    return principal


def set_acl(
    session: Session, endpoint: Endpoint, entries: list[AccessControlEntry], *, replace: bool
) -> None:
    """PUT replaces every direct grant; PATCH updates the named principals only."""
    if endpoint.workspace_id is None:
        raise InvalidParameter(
            "shared endpoints are queryable by everyone and managed by account admins; "
            "their permissions cannot be changed"
        )
    resolved = [
        (_principal(session, endpoint.workspace_id, e), e.permission_level) for e in entries
    ]
    if replace:
        session.execute(
            delete(EndpointPermission).where(EndpointPermission.endpoint_id == endpoint.id)
        )
    for principal, level in resolved:
        grant = session.get(EndpointPermission, (endpoint.id, principal.id))
        if grant is None:
            session.add(
                EndpointPermission(endpoint_id=endpoint.id, principal_id=principal.id, level=level)
            )
        else:
            grant.level = level
