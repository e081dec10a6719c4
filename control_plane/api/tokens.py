"""Personal access tokens, Databricks token API shapes (`/api/2.0/token/...`).

A new token's expiry follows `control_plane.auth.tokens.expiry`: at most the
`max_token_lifetime_s` setting (longer is a 400, absent gets the maximum) and never later
than the expiry of the token the request came with."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from control_plane.api.deps import CallerDep, PlaneDep, SessionDep
from control_plane.auth import issue_token
from control_plane.auth.tokens import expiry, minter_expiry
from control_plane.db.models import Principal, Token
from control_plane.errors import NotFound
from control_plane.ids import to_millis, utcnow
from control_plane.state import ControlPlane
from control_plane.text import StorableText

router = APIRouter(prefix="/api/2.0/token", tags=["tokens"])
MAX_LIFETIME_S = 100 * 365 * 86_400  # longer ones overflow the expiry date; omit for never


class CreateToken(BaseModel):
    model_config = ConfigDict(extra="ignore")
    comment: StorableText | None = Field(default=None, max_length=1024)
    lifetime_seconds: int | None = Field(
        default=None,
        le=MAX_LIFETIME_S,
        description="omit (or <= 0) for the longest lifetime allowed: the server's maximum "
        "token lifetime (a longer one is refused), or none; never past the expiry of the "
        "token that creates it",
    )


class DeleteToken(BaseModel):
    model_config = ConfigDict(extra="ignore")
    token_id: str


class TokenInfo(BaseModel):
    token_id: str
    comment: str
    creation_time: int = Field(description="epoch milliseconds")
    expiry_time: int = Field(description="epoch milliseconds; -1: never expires")

    @classmethod
    def of(cls, token: Token) -> TokenInfo:
        return cls(
            token_id=token.id,
            comment=token.comment,
            creation_time=to_millis(token.created_at),
            expiry_time=to_millis(token.expires_at) if token.expires_at else -1,
        )


class CreatedToken(BaseModel):
    token_value: str = Field(description="the token itself: shown once, never stored")
    token_info: TokenInfo


class TokenList(BaseModel):
    token_infos: list[TokenInfo]


class Empty(BaseModel):
    """The empty object some calls answer."""


def forget_credentials(plane: ControlPlane) -> None:
    """After a token is revoked or a principal offboarded: this process's query path stops
    honouring cached resolutions at once (other processes within `lookup_cache_ttl_s`)."""
    if plane.gateway is not None:
        plane.gateway.targets.forget()


@router.post("/create", response_model=CreatedToken)
def create_token(
    body: CreateToken, session: SessionDep, caller: CallerDep, plane: PlaneDep
) -> CreatedToken:
    principal = session.get(Principal, caller.principal_id)
    assert principal is not None
    expires_at = expiry(
        utcnow(),
        body.lifetime_seconds,
        max_lifetime_s=plane.settings.max_token_lifetime_s,
        minter_expires_at=minter_expiry(session, caller.token_id),
    )
    issued = issue_token(session, principal, comment=body.comment or "", expires_at=expires_at)
    info = TokenInfo.of(issued.record)
    session.commit()
    return CreatedToken(token_value=issued.value, token_info=info)


@router.get("/list", response_model=TokenList)
def list_tokens(session: SessionDep, caller: CallerDep) -> TokenList:
    tokens = session.scalars(
        select(Token)
        .where(Token.principal_id == caller.principal_id, Token.revoked_at.is_(None))
        .order_by(Token.created_at)
    ).all()
    return TokenList(token_infos=[TokenInfo.of(t) for t in tokens])


@router.post("/delete", response_model=Empty)
def delete_token(
    body: DeleteToken, session: SessionDep, caller: CallerDep, plane: PlaneDep
) -> Empty:
    token = session.get(Token, body.token_id)
    if token is None or token.principal_id != caller.principal_id or token.revoked_at:
        raise NotFound(f"token {body.token_id!r} does not exist")
    token.revoked_at = utcnow()  # kept (revoked) so audits can still name it
    session.commit()
    forget_credentials(plane)
    return Empty()
