"""Finding the endpoints a caller may see: its workspace's and the account's shared ones;
another workspace's endpoint does not exist for it (404), one it may see but not use is
403. Shared by the management API and the query path."""

from __future__ import annotations

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session

from control_plane.auth import Caller, Level, level_of, require
from control_plane.db.models import Endpoint
from control_plane.errors import NotFound


def visible_to(caller: Caller) -> Select[tuple[Endpoint]]:
    return select(Endpoint).where(
        Endpoint.account_id == caller.account_id,
        or_(Endpoint.workspace_id == caller.workspace_id, Endpoint.workspace_id.is_(None)),
    )


def by_name(
    session: Session, caller: Caller, name: str, needed: Level = Level.CAN_VIEW
) -> tuple[Endpoint, Level]:
    endpoint = session.scalars(visible_to(caller).where(Endpoint.name == name)).first()
    if endpoint is None:
        raise NotFound(f"endpoint {name!r} does not exist")
    return endpoint, require(session, endpoint, caller, needed)


def by_id(
    session: Session, caller: Caller, endpoint_id: str, needed: Level = Level.CAN_VIEW
) -> tuple[Endpoint, Level]:
    endpoint = session.scalars(visible_to(caller).where(Endpoint.id == endpoint_id)).first()
    if endpoint is None:
        raise NotFound(f"endpoint id {endpoint_id!r} does not exist")
    return endpoint, require(session, endpoint, caller, needed)


def listed(session: Session, caller: Caller, needed: Level = Level.CAN_VIEW) -> list[Endpoint]:
    endpoints = session.scalars(visible_to(caller).order_by(Endpoint.name)).all()
    return [e for e in endpoints if level_of(session, e, caller) >= needed]
