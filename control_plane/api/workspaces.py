"""Account administration: workspaces and their principals (users, service principals,
groups). Each new user or service principal gets an initial token, shown once; it lives at
most `max_token_lifetime_s` and never past the token of the admin who added it.
Deactivation and deletion are SCIM (`control_plane.api.scim`)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billing.settings import Cloud
from control_plane.api.deps import CallerDep, PlaneDep, SessionDep
from control_plane.auth import Caller, issue_token
from control_plane.auth.tokens import IssuedToken, expiry, minter_expiry
from control_plane.db.models import GroupMember, Principal, Workspace
from control_plane.errors import AlreadyExists, InvalidParameter, NotFound, PermissionDenied
from control_plane.ids import new_workspace_id, utcnow
from control_plane.placement import chosen_placement, stored_placement
from control_plane.settings import Settings
from control_plane.text import StorableText

router = APIRouter(prefix="/api/2.0/workspaces", tags=["workspaces"])
PrincipalName = Field(min_length=1, max_length=255)


class CreateWorkspace(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1, max_length=255)
    cloud: Cloud | None = Field(
        default=None,
        description="where its endpoints run and which SKUs bill it: local, or a cloud "
        "configured under clouds; default: the installation's cloud. Fixed once created",
    )
    region: str | None = Field(
        default=None,
        max_length=32,
        pattern=r"^[a-z0-9-]+$",
        description="a region of that cloud; default: billing.region for the installation's "
        "cloud, else the cloud's default region",
    )


class CreateUser(BaseModel):
    model_config = ConfigDict(extra="ignore")
    user_name: StorableText = PrincipalName
    admin: bool = False


class CreateServicePrincipal(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: StorableText = PrincipalName
    admin: bool = False


class CreateGroup(BaseModel):
    model_config = ConfigDict(extra="ignore")
    group_name: StorableText = PrincipalName
    members: list[str] = Field(default_factory=list, description="user or service principal names")


class WorkspacePublic(BaseModel):
    workspace_id: str
    name: str
    account_id: str = Field(description="its account (the budgets API's path names it)")
    cloud: Cloud
    region: str

    @classmethod
    def of(cls, workspace: Workspace, settings: Settings) -> WorkspacePublic:
        where = stored_placement(workspace.cloud, workspace.region, settings)
        return cls(
            workspace_id=workspace.id,
            name=workspace.name,
            account_id=workspace.account_id,
            cloud=where.cloud,
            region=where.region,
        )


class WorkspaceList(BaseModel):
    workspaces: list[WorkspacePublic]


class CreatedUser(BaseModel):
    id: str = Field(description="its id in the SCIM API (/api/2.0/preview/scim/v2/Users)")
    user_name: str
    token_value: str = Field(description="the user's first token: shown once")


class CreatedServicePrincipal(BaseModel):
    id: str = Field(
        description="its id in the SCIM API (/api/2.0/preview/scim/v2/ServicePrincipals)"
    )
    service_principal_name: str
    token_value: str = Field(description="the service principal's first token: shown once")


class CreatedGroup(BaseModel):
    group_name: str
    members: list[str]


def _require_account_admin(caller: Caller) -> None:
    if not caller.is_account_admin:
        raise PermissionDenied("only account admins manage workspaces")


def _workspace_for_admin(session: Session, caller: Caller, workspace_id: str) -> Workspace:
    workspace = session.get(Workspace, workspace_id)
    if workspace is None or workspace.account_id != caller.account_id:
        raise NotFound(f"workspace {workspace_id!r} does not exist")
    if not (
        caller.is_account_admin
        or (caller.is_workspace_admin and caller.workspace_id == workspace_id)
    ):
        if caller.workspace_id != workspace_id:
            raise NotFound(f"workspace {workspace_id!r} does not exist")
        raise PermissionDenied("only account admins and this workspace's admins add principals")
    return workspace


@router.post("", response_model=WorkspacePublic)
def create_workspace(
    body: CreateWorkspace, session: SessionDep, caller: CallerDep, plane: PlaneDep
) -> WorkspacePublic:
    _require_account_admin(caller)
    where = chosen_placement(body.cloud, body.region, plane.settings)
    workspace = Workspace(
        id=new_workspace_id(),
        account_id=caller.account_id,
        name=body.name,
        created_at=utcnow(),
        cloud=where.cloud,
        region=where.region,
    )
    session.add(workspace)
    try:
        session.commit()
    except IntegrityError:
        raise AlreadyExists(f"workspace {body.name!r} already exists") from None
    return WorkspacePublic.of(workspace, plane.settings)


@router.get("", response_model=WorkspaceList)
def list_workspaces(session: SessionDep, caller: CallerDep, plane: PlaneDep) -> WorkspaceList:
    _require_account_admin(caller)
    rows = session.scalars(
        select(Workspace).where(Workspace.account_id == caller.account_id).order_by(Workspace.name)
    ).all()
    return WorkspaceList(workspaces=[WorkspacePublic.of(w, plane.settings) for w in rows])


def _add_principal(
    session: Session, workspace: Workspace, kind: str, name: str, *, admin: bool
) -> Principal:
    principal = Principal(
        workspace_id=workspace.id,
        kind=kind,
        name=name,
        is_workspace_admin=admin,
        is_account_admin=False,
        active=True,
        created_at=utcnow(),
    )
    session.add(principal)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise AlreadyExists(f"{kind.replace('_', ' ')} {name!r} already exists") from None
    return principal


def _initial_token(
    session: Session, caller: Caller, principal: Principal, max_lifetime_s: int | None
) -> IssuedToken:
    expires_at = expiry(
        utcnow(),
        None,
        max_lifetime_s=max_lifetime_s,
        minter_expires_at=minter_expiry(session, caller.token_id),
    )
    return issue_token(
        session,
        principal,
        comment="initial token",
        expires_at=expires_at,
        created_by=(caller.principal_id, caller.name),
    )


@router.post("/{workspace_id}/users", response_model=CreatedUser)
def create_user(
    workspace_id: str, body: CreateUser, session: SessionDep, caller: CallerDep, plane: PlaneDep
) -> CreatedUser:
    workspace = _workspace_for_admin(session, caller, workspace_id)
    user = _add_principal(session, workspace, "user", body.user_name, admin=body.admin)
    token = _initial_token(session, caller, user, plane.settings.max_token_lifetime_s)
    session.commit()
    return CreatedUser(id=str(user.id), user_name=user.name, token_value=token.value)


@router.post("/{workspace_id}/service-principals", response_model=CreatedServicePrincipal)
def create_service_principal(
    workspace_id: str,
    body: CreateServicePrincipal,
    session: SessionDep,
    caller: CallerDep,
    plane: PlaneDep,
) -> CreatedServicePrincipal:
    workspace = _workspace_for_admin(session, caller, workspace_id)
    principal = _add_principal(session, workspace, "service_principal", body.name, admin=body.admin)
    token = _initial_token(session, caller, principal, plane.settings.max_token_lifetime_s)
    session.commit()
    return CreatedServicePrincipal(
        id=str(principal.id), service_principal_name=principal.name, token_value=token.value
    )


@router.post("/{workspace_id}/groups", response_model=CreatedGroup)
def create_group(
    workspace_id: str, body: CreateGroup, session: SessionDep, caller: CallerDep
) -> CreatedGroup:
    workspace = _workspace_for_admin(session, caller, workspace_id)
    members = session.scalars(
        select(Principal).where(
            Principal.workspace_id == workspace.id,
            Principal.name.in_(body.members),
            Principal.kind.in_(("user", "service_principal")),
        )
    ).all()
    missing = sorted(set(body.members) - {m.name for m in members})
    if missing:
        raise InvalidParameter(f"no such users or service principals: {', '.join(missing)}")
    group = _add_principal(session, workspace, "group", body.group_name, admin=False)
    session.add_all(GroupMember(group_id=group.id, member_id=m.id) for m in members)
    session.commit()
    return CreatedGroup(group_name=group.name, members=sorted(m.name for m in members))
