"""Personal access tokens, Databricks token API shapes (`/api/2.0/token/...`)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from control_plane.api.deps import CallerDep, PlaneDep, SessionDep
from control_plane.auth import issue_token
from control_plane.db.models import Principal, Token
from control_plane.errors import NotFound
from control_plane.ids import to_millis, utcnow

router = APIRouter(prefix="/api/2.0/token", tags=["tokens"])


class CreateToken(BaseModel):
    model_config = ConfigDict(extra="ignore")
    comment: str | None = Field(default=None, max_length=1024)
    lifetime_seconds: int | None = Field(
        default=None, description="omit (or <= 0) for a token that does not expire"
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


@router.post("/create", response_model=CreatedToken)
def create_token(body: CreateToken, session: SessionDep, caller: CallerDep) -> CreatedToken:
    principal = session.get(Principal, caller.principal_id)
    assert principal is not None
    lifetime = (
        body.lifetime_seconds if body.lifetime_seconds and body.lifetime_seconds > 0 else None
    )
    issued = issue_token(session, principal, comment=body.comment or "", lifetime_seconds=lifetime)
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
    if plane.gateway is not None:  # this process stops honouring it at once (others: TTL)
        plane.gateway.targets.forget()
    return Empty()
