"""Request dependencies: the control plane, a database session (one unit of work per
request), and the authenticated caller."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session

from control_plane.auth import Caller, authenticate
from control_plane.db.models import Workspace
from control_plane.endpoints.environment import EnvironmentPolicy
from control_plane.endpoints.service import EndpointService
from control_plane.placement import stored_placement
from control_plane.state import ControlPlane


def get_plane(request: Request) -> ControlPlane:
    plane: ControlPlane = request.app.state.plane
    return plane


PlaneDep = Annotated[ControlPlane, Depends(get_plane)]


def get_session(plane: PlaneDep) -> Iterator[Session]:
    with plane.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


# The bearer token, declared as the API's security scheme (so /openapi.json says how to
# authenticate, and clients and fuzzers send it as one); `authenticate` parses the header.
bearer = APIKeyHeader(
    name="Authorization",
    scheme_name="bearer",
    description="`Bearer <token>`: a personal access token (dapi...)",
    auto_error=False,
)
AuthorizationDep = Annotated[str | None, Security(bearer)]


def get_caller(request: Request, session: SessionDep, authorization: AuthorizationDep) -> Caller:
    caller = authenticate(session, authorization)
    request.state.caller = caller  # who acted, for the audit trail (control_plane.audit)
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]


def get_endpoints(session: SessionDep, caller: CallerDep, plane: PlaneDep) -> EndpointService:
    workspace = session.get(Workspace, caller.workspace_id)
    return EndpointService(
        session,
        caller,
        plane.settings.workers,
        plane.check_capacity,
        plane.chunk_size,
        EnvironmentPolicy(plane.settings.environment),
        None
        if workspace is None
        else stored_placement(workspace.cloud, workspace.region, plane.settings),
        plane.settings.system_models,
        guard_model=plane.settings.gateway.guard_model_endpoint is not None,
    )


EndpointsDep = Annotated[EndpointService, Depends(get_endpoints)]
