"""SCIM users and service principals, as Databricks' workspace SCIM API spells them
(`/api/2.0/preview/scim/v2/...`; `WorkspaceClient().users` and `.service_principals`),
for offboarding: list, get, PATCH `active`, DELETE. Principals are added through
`/api/2.0/workspaces/{id}/users` and `/service-principals`, whose answers carry the SCIM id.

Deactivating (`{"op": "replace", "path": "active", "value": false}`) revokes every token
of the principal at once and stops it from authenticating; deleting removes it with its
tokens. This process's query path forgets its cached resolutions immediately; other
control-plane processes stop honouring the tokens within `gateway.lookup_cache_ttl_s`.
Admins only (see `control_plane.auth.principals` for who manages whom).
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control_plane.api.deps import CallerDep, PlaneDep, SessionDep
from control_plane.api.tokens import Empty, forget_credentials
from control_plane.auth import Caller
from control_plane.auth.principals import (
    PrincipalKind,
    managed_principal,
    remove,
    require_admin,
    scoped_workspace,
    set_active,
)
from control_plane.db.models import Principal
from control_plane.errors import InvalidParameter
from control_plane.ids import utcnow
from control_plane.state import ControlPlane
from control_plane.text import StorableText

router = APIRouter(prefix="/api/2.0/preview/scim/v2", tags=["scim"])

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
SERVICE_PRINCIPAL_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ServicePrincipal"
LIST_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
MAX_COUNT = 10_000
# `attribute eq "value"` (SCIM filter, the one form supported)
_FILTER = re.compile(r"""^\s*([A-Za-z.]+)\s+eq\s+(?:"([^"]*)"|'([^']*)')\s*$""", re.IGNORECASE)


class ScimUser(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    schemas: list[str] = Field(default_factory=lambda: [USER_SCHEMA])
    id: str
    user_name: str = Field(alias="userName")
    display_name: str = Field(alias="displayName")
    active: bool

    @classmethod
    def of(cls, principal: Principal) -> ScimUser:
        return cls(
            id=str(principal.id),
            userName=principal.name,
            displayName=principal.name,
            active=principal.active,
        )


class ScimServicePrincipal(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    schemas: list[str] = Field(default_factory=lambda: [SERVICE_PRINCIPAL_SCHEMA])
    id: str
    application_id: str = Field(alias="applicationId", description="its name in moeserve")
    display_name: str = Field(alias="displayName")
    active: bool

    @classmethod
    def of(cls, principal: Principal) -> ScimServicePrincipal:
        return cls(
            id=str(principal.id),
            applicationId=principal.name,
            displayName=principal.name,
            active=principal.active,
        )


class ScimUserList(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    schemas: list[str] = Field(default_factory=lambda: [LIST_SCHEMA])
    total_results: int = Field(alias="totalResults")
    start_index: int = Field(alias="startIndex")
    items_per_page: int = Field(alias="itemsPerPage")
    resources: list[ScimUser] = Field(alias="Resources")


class ScimServicePrincipalList(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    schemas: list[str] = Field(default_factory=lambda: [LIST_SCHEMA])
    total_results: int = Field(alias="totalResults")
    start_index: int = Field(alias="startIndex")
    items_per_page: int = Field(alias="itemsPerPage")
    resources: list[ScimServicePrincipal] = Field(alias="Resources")


class PatchOpKind(StrEnum):
    ADD = "add"
    REMOVE = "remove"
    REPLACE = "replace"


class PatchOperation(BaseModel):
    model_config = ConfigDict(extra="ignore")
    op: PatchOpKind
    path: str | None = Field(default=None, max_length=255)
    value: JsonValue = None

    @field_validator("op", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:  # Entra ID sends "Replace"
        return value.lower() if isinstance(value, str) else value


class ScimPatch(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    schemas: list[str] = Field(default_factory=lambda: [PATCH_SCHEMA], max_length=8)
    operations: list[PatchOperation] = Field(alias="Operations", min_length=1, max_length=32)

    def wanted_active(self) -> bool:
        """The `active` these operations set; 400 for anything else (moeserve's SCIM
        changes nothing but `active`)."""
        if PATCH_SCHEMA not in self.schemas:
            raise InvalidParameter(f"schemas must be [{PATCH_SCHEMA!r}]")
        wanted: bool | None = None
        for operation in self.operations:
            value = operation.value
            if operation.path is None and isinstance(value, dict) and set(value) == {"active"}:
                value = value["active"]
            elif (operation.path or "").lower() != "active":
                value = None  # not `active`: refused below
            if operation.op == PatchOpKind.REMOVE or _as_bool(value) is None:
                raise InvalidParameter(
                    'only {"op": "replace", "path": "active", "value": true|false} is '
                    'supported (also "false" or [{"value": "false"}]; databricks-sdk drops '
                    "value=False, so send the text there)"
                )
            wanted = _as_bool(value)
        assert wanted is not None
        return wanted


def _as_bool(value: JsonValue) -> bool | None:
    """`false`, `"false"` (some IdPs send text; databricks-sdk drops a `value=False`, so
    its callers send the text) or Databricks' documented `[{"value": "false"}]`."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        value = value[0].get("value")
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def _patch(
    session: Session, caller: Caller, plane: ControlPlane, principal: Principal, body: ScimPatch
) -> None:
    set_active(session, caller, principal, body.wanted_active(), utcnow())
    session.commit()
    forget_credentials(plane)  # this process; others within gateway.lookup_cache_ttl_s


def _delete(session: Session, caller: Caller, plane: ControlPlane, principal: Principal) -> None:
    remove(session, caller, principal, utcnow())
    session.commit()
    forget_credentials(plane)


def _page(
    session: Session,
    caller: Caller,
    kind: PrincipalKind,
    filter_: str | None,
    attributes: dict[str, str],
    start_index: int,
    count: int,
    workspace_id: str | None,
) -> tuple[int, list[Principal]]:
    require_admin(caller, f"{kind.label}s")
    workspace = scoped_workspace(session, caller, workspace_id)
    where = [Principal.workspace_id == workspace, Principal.kind == kind]
    if filter_:
        match = _FILTER.match(filter_)
        if match is None or match.group(1).lower() not in attributes:
            raise InvalidParameter(
                f'filter supports only {" or ".join(sorted(set(attributes.values())))} eq "value"'
            )
        value = match.group(2) if match.group(2) is not None else match.group(3)
        where.append(Principal.name == value)  # every supported attribute is the name
    total = session.scalar(select(func.count()).select_from(Principal).where(*where)) or 0
    rows = session.scalars(
        select(Principal).where(*where).order_by(Principal.id).offset(start_index - 1).limit(count)
    ).all()
    return total, list(rows)


StartIndex = Annotated[
    int, Query(alias="startIndex", ge=1, lt=2**31, description="first item is 1")
]
Count = Annotated[int, Query(ge=0, le=MAX_COUNT, description="items per page")]
Filter = Annotated[
    StorableText | None, Query(alias="filter", max_length=1024, description='`userName eq "x"`')
]
WorkspaceId = Annotated[
    StorableText | None,
    Query(
        max_length=32,
        description="moeserve extension for account admins: another workspace of the account",
    ),
]


@router.get("/Users", response_model=ScimUserList)
def list_users(
    session: SessionDep,
    caller: CallerDep,
    start_index: StartIndex = 1,
    count: Count = MAX_COUNT,
    scim_filter: Filter = None,
    workspace_id: WorkspaceId = None,
) -> ScimUserList:
    names = {"username": "userName", "displayname": "displayName"}
    total, rows = _page(
        session, caller, PrincipalKind.USER, scim_filter, names, start_index, count, workspace_id
    )
    return ScimUserList(
        totalResults=total,
        startIndex=start_index,
        itemsPerPage=len(rows),
        Resources=[ScimUser.of(p) for p in rows],
    )


@router.get("/Users/{user_id}", response_model=ScimUser)
def get_user(user_id: str, session: SessionDep, caller: CallerDep) -> ScimUser:
    return ScimUser.of(managed_principal(session, caller, user_id, PrincipalKind.USER))


@router.patch("/Users/{user_id}", response_model=ScimUser)
def patch_user(
    user_id: str, body: ScimPatch, session: SessionDep, caller: CallerDep, plane: PlaneDep
) -> ScimUser:
    principal = managed_principal(session, caller, user_id, PrincipalKind.USER)
    _patch(session, caller, plane, principal, body)
    return ScimUser.of(principal)


@router.delete("/Users/{user_id}", response_model=Empty)
def delete_user(user_id: str, session: SessionDep, caller: CallerDep, plane: PlaneDep) -> Empty:
    principal = managed_principal(session, caller, user_id, PrincipalKind.USER)
    _delete(session, caller, plane, principal)
    return Empty()


@router.get("/ServicePrincipals", response_model=ScimServicePrincipalList)
def list_service_principals(
    session: SessionDep,
    caller: CallerDep,
    start_index: StartIndex = 1,
    count: Count = MAX_COUNT,
    scim_filter: Filter = None,
    workspace_id: WorkspaceId = None,
) -> ScimServicePrincipalList:
    names = {"applicationid": "applicationId", "displayname": "displayName"}
    kind = PrincipalKind.SERVICE_PRINCIPAL
    total, rows = _page(session, caller, kind, scim_filter, names, start_index, count, workspace_id)
    return ScimServicePrincipalList(
        totalResults=total,
        startIndex=start_index,
        itemsPerPage=len(rows),
        Resources=[ScimServicePrincipal.of(p) for p in rows],
    )


@router.get("/ServicePrincipals/{principal_id}", response_model=ScimServicePrincipal)
def get_service_principal(
    principal_id: str, session: SessionDep, caller: CallerDep
) -> ScimServicePrincipal:
    kind = PrincipalKind.SERVICE_PRINCIPAL
    return ScimServicePrincipal.of(managed_principal(session, caller, principal_id, kind))


@router.patch("/ServicePrincipals/{principal_id}", response_model=ScimServicePrincipal)
def patch_service_principal(
    principal_id: str, body: ScimPatch, session: SessionDep, caller: CallerDep, plane: PlaneDep
) -> ScimServicePrincipal:
    kind = PrincipalKind.SERVICE_PRINCIPAL
    principal = managed_principal(session, caller, principal_id, kind)
    _patch(session, caller, plane, principal, body)
    return ScimServicePrincipal.of(principal)


@router.delete("/ServicePrincipals/{principal_id}", response_model=Empty)
def delete_service_principal(
    principal_id: str, session: SessionDep, caller: CallerDep, plane: PlaneDep
) -> Empty:
    kind = PrincipalKind.SERVICE_PRINCIPAL
    principal = managed_principal(session, caller, principal_id, kind)
    _delete(session, caller, plane, principal)
    return Empty()
