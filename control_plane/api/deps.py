"""Request dependencies: the control plane, a database session (one unit of work per
request), and the authenticated caller."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from control_plane.auth import Caller, authenticate
from control_plane.endpoints.service import EndpointService
from control_plane.state import ControlPlane


def get_plane(request: Request) -> ControlPlane:
    plane: ControlPlane = request.app.state.plane
    return plane


PlaneDep = Annotated[ControlPlane, Depends(get_plane)]


def get_session(plane: PlaneDep) -> Iterator[Session]:
    with plane.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_caller(
    session: SessionDep, authorization: Annotated[str | None, Header()] = None
) -> Caller:
    return authenticate(session, authorization)


CallerDep = Annotated[Caller, Depends(get_caller)]


def get_endpoints(session: SessionDep, caller: CallerDep, plane: PlaneDep) -> EndpointService:
    return EndpointService(
        session, caller, plane.settings.workers, plane.check_capacity, plane.chunk_size
    )


EndpointsDep = Annotated[EndpointService, Depends(get_endpoints)]
