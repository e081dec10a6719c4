"""Endpoint access control lists: read, replace (PUT) and update (PATCH) direct grants."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from control_plane.db.models import Endpoint, EndpointPermission, Principal
from control_plane.errors import InvalidParameter

# ACL entry field -> principal kind
_NAME_FIELDS = {
    "user_name": "user",
    "group_name": "group",
    "service_principal_name": "service_principal",
}


def acl_view(session: Session, endpoint: Endpoint) -> dict[str, Any]:
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
            {
                field: principal.name,
                "all_permissions": [{"permission_level": level, "inherited": False}],
            }
        )
    return {
        "object_id": f"/serving-endpoints/{endpoint.id}",
        "object_type": "serving-endpoint",
        "access_control_list": entries,
    }


def _principal(session: Session, workspace_id: str, entry: Any) -> Principal:
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


def set_acl(session: Session, endpoint: Endpoint, entries: list[Any], *, replace: bool) -> None:
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
