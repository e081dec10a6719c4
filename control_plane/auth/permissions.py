"""Endpoint permission levels and who holds which.

CAN_VIEW < CAN_QUERY < CAN_MANAGE. Workspace admins manage every endpoint of their
workspace; creators get CAN_MANAGE; shared (platform) endpoints are queryable by everyone
and managed by account admins only. An endpoint of another workspace is invisible (404),
never "forbidden", so its existence does not leak.
"""

from __future__ import annotations

from enum import IntEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.auth.caller import Caller
from control_plane.db.models import Endpoint, EndpointPermission
from control_plane.errors import NotFound, PermissionDenied


class Level(IntEnum):
    NONE = 0
    CAN_VIEW = 1
    CAN_QUERY = 2
    CAN_MANAGE = 3


LEVEL_NAMES = ("CAN_VIEW", "CAN_QUERY", "CAN_MANAGE")


def visible(endpoint: Endpoint, caller: Caller) -> bool:
    if endpoint.account_id != caller.account_id:
        return False
    return endpoint.workspace_id is None or endpoint.workspace_id == caller.workspace_id


def level_of(session: Session, endpoint: Endpoint, caller: Caller) -> Level:
    if not visible(endpoint, caller):
        return Level.NONE
    if endpoint.workspace_id is None:  # shared endpoint
        return Level.CAN_MANAGE if caller.is_account_admin else Level.CAN_QUERY
    if caller.is_workspace_admin:
        return Level.CAN_MANAGE
    granted = session.scalars(
        select(EndpointPermission.level).where(
            EndpointPermission.endpoint_id == endpoint.id,
            EndpointPermission.principal_id.in_(caller.principal_ids),
        )
    ).all()
    return max((Level[name] for name in granted), default=Level.NONE)


def require(session: Session, endpoint: Endpoint, caller: Caller, needed: Level) -> Level:
    """The caller's level, or 404 (not visible) / 403 (visible, too low)."""
    have = level_of(session, endpoint, caller)
    if not visible(endpoint, caller):
        raise NotFound(f"endpoint {endpoint.name!r} does not exist")
    if have < needed:
        raise PermissionDenied(
            f"{caller.name} has {have.name if have else 'no permission'} on endpoint "
            f"{endpoint.name!r}; this needs {needed.name}"
        )
    return have
