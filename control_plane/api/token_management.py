"""Token management for admins, Databricks `token-management` shapes (what
`WorkspaceClient().token_management` calls): list, get and delete any token of the
workspace, and mint one on behalf of a service principal (or, as a moeserve extension, of a
user: moeserve has no interactive login, so an admin is how a principal whose tokens
expired or were revoked gets a new one).

Workspace admins see their own workspace's tokens, account admins those of any workspace
of their account; other tokens do not exist (404). Revoked tokens are not listed. No
answer ever carries a token's secret or digest, except the value of a token minted here,
shown once.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control_plane.api.deps import CallerDep, PlaneDep, SessionDep
from control_plane.api.tokens import (
    MAX_LIFETIME_S,
    Empty,
    TokenInfo,
    forget_credentials,
)
from control_plane.auth import Caller, issue_token
from control_plane.auth.principals import (
    PrincipalKind,
    in_scope,
    require_admin,
    require_may_manage,
    scoped_workspace,
)
from control_plane.auth.tokens import expiry, minter_expiry
from control_plane.db.models import Principal, Token
from control_plane.errors import InvalidParameter, NotFound
from control_plane.ids import utcnow
from control_plane.text import StorableText

router = APIRouter(prefix="/api/2.0/token-management", tags=["token-management"])
WHAT = "other principals' tokens"
_TOKEN_ID = re.compile("[0-9a-f]{32}")


class ManagedTokenInfo(TokenInfo):
    """Databricks `TokenInfo` as token management shows it."""

    owner_id: int = Field(description="SCIM id of the principal the token belongs to")
    created_by_id: int = Field(description="SCIM id of the principal that minted it")
    created_by_username: str = Field(description="name of the principal that minted it")
    workspace_id: int | None = Field(default=None, description="the owner's workspace")

    @classmethod
    def of_owned(cls, token: Token, owner: Principal) -> ManagedTokenInfo:
        base = TokenInfo.of(token)
        workspace = owner.workspace_id
        return cls(
            **base.model_dump(),
            owner_id=owner.id,
            created_by_id=token.created_by_id if token.created_by_id is not None else owner.id,
            created_by_username=token.created_by_name or owner.name,
            workspace_id=int(workspace) if workspace.isdigit() else None,
        )


class ManagedTokenList(BaseModel):
    """Databricks `ListTokensResponse`."""

    token_infos: list[ManagedTokenInfo]


class ManagedToken(BaseModel):
    """Databricks `GetTokenResponse`."""

    token_info: ManagedTokenInfo


class CreateOboToken(BaseModel):
    model_config = ConfigDict(extra="ignore")
    application_id: StorableText | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="the service principal (its applicationId: its name in moeserve)",
    )
    user_name: StorableText | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="moeserve extension: a user of the workspace instead of a service principal",
    )
    comment: StorableText | None = Field(default=None, max_length=1024)
    lifetime_seconds: int | None = Field(
        default=None,
        le=MAX_LIFETIME_S,
        description="omit (or <= 0) for the longest allowed; bounded like /api/2.0/token/create",
    )


class CreatedOboToken(BaseModel):
    """Databricks `CreateOboTokenResponse`."""

    token_info: ManagedTokenInfo
    token_value: str = Field(description="the token itself: shown once, never stored")


def _managed_token(session: Session, caller: Caller, token_id: str) -> tuple[Token, Principal]:
    require_admin(caller, WHAT)
    row = None
    if _TOKEN_ID.fullmatch(token_id):  # anything else names no token (and may not be storable)
        row = session.execute(
            select(Token, Principal)
            .join(Principal, Principal.id == Token.principal_id)
            .where(Token.id == token_id, Token.revoked_at.is_(None))
        ).first()
    if row is None or not in_scope(session, caller, row[1].workspace_id):
        raise NotFound("no such token in this workspace")
    return row[0], row[1]


@router.get("/tokens", response_model=ManagedTokenList)
def list_tokens(
    session: SessionDep,
    caller: CallerDep,
    created_by_id: Annotated[
        int | None, Query(ge=0, lt=2**31, description="SCIM id of the minter")
    ] = None,
    created_by_username: Annotated[StorableText | None, Query(max_length=255)] = None,
    workspace_id: Annotated[
        StorableText | None,
        Query(
            max_length=32,
            description="moeserve extension for account admins: another workspace of the account",
        ),
    ] = None,
) -> ManagedTokenList:
    require_admin(caller, WHAT)
    workspace = scoped_workspace(session, caller, workspace_id)
    query = (
        select(Token, Principal)
        .join(Principal, Principal.id == Token.principal_id)
        .where(Principal.workspace_id == workspace, Token.revoked_at.is_(None))
        .order_by(Token.created_at, Token.id)
    )
    if created_by_id is not None:
        query = query.where(func.coalesce(Token.created_by_id, Token.principal_id) == created_by_id)
    if created_by_username is not None:
        query = query.where(
            func.coalesce(Token.created_by_name, Principal.name) == created_by_username
        )
    rows = session.execute(query).all()
    return ManagedTokenList(
        token_infos=[ManagedTokenInfo.of_owned(token, owner) for token, owner in rows]
    )


@router.get("/tokens/{token_id}", response_model=ManagedToken)
def get_token(token_id: str, session: SessionDep, caller: CallerDep) -> ManagedToken:
    token, owner = _managed_token(session, caller, token_id)
    return ManagedToken(token_info=ManagedTokenInfo.of_owned(token, owner))


@router.delete("/tokens/{token_id}", response_model=Empty)
def delete_token(token_id: str, session: SessionDep, caller: CallerDep, plane: PlaneDep) -> Empty:
    token, owner = _managed_token(session, caller, token_id)
    require_may_manage(caller, owner)
    token.revoked_at = utcnow()  # kept (revoked) so audits can still name it
    session.commit()
    forget_credentials(plane)
    return Empty()


@router.post("/on-behalf-of/tokens", response_model=CreatedOboToken)
def create_obo_token(
    body: CreateOboToken, session: SessionDep, caller: CallerDep, plane: PlaneDep
) -> CreatedOboToken:
    require_admin(caller, WHAT)
    if (body.application_id is None) == (body.user_name is None):
        raise InvalidParameter("name exactly one of application_id (service principal), user_name")
    kind, name = (
        (PrincipalKind.SERVICE_PRINCIPAL, body.application_id)
        if body.application_id is not None
        else (PrincipalKind.USER, body.user_name)
    )
    owner = session.scalars(
        select(Principal).where(
            Principal.workspace_id == caller.workspace_id,
            Principal.kind == kind,
            Principal.name == name,
        )
    ).first()
    if owner is None:
        raise NotFound(f"no such {kind.label} in this workspace")
    require_may_manage(caller, owner)
    if not owner.active:
        raise InvalidParameter(f"that {kind.label} is deactivated; reactivate it first")
    expires_at = expiry(
        utcnow(),
        body.lifetime_seconds,
        max_lifetime_s=plane.settings.max_token_lifetime_s,
        minter_expires_at=minter_expiry(session, caller.token_id),
    )
    issued = issue_token(
        session,
        owner,
        comment=body.comment or "",
        expires_at=expires_at,
        created_by=(caller.principal_id, caller.name),
    )
    info = ManagedTokenInfo.of_owned(issued.record, owner)
    session.commit()
    return CreatedOboToken(token_info=info, token_value=issued.value)
