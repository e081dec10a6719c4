"""Personal access tokens, Databricks token API shapes (`/api/2.0/token/...`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from control_plane.api.deps import CallerDep, PlaneDep, SessionDep
from control_plane.auth import issue_token
from control_plane.db.models import Principal, Token
from control_plane.errors import NotFound
from control_plane.ids import to_millis, utcnow

router = APIRouter(prefix="/api/2.0/token", tags=["tokens"])
Json = dict[str, Any]


class CreateToken(BaseModel):
    model_config = ConfigDict(extra="ignore")
    comment: str | None = Field(default=None, max_length=1024)
    lifetime_seconds: int | None = Field(
        default=None, description="omit (or <= 0) for a token that does not expire"
    )


class DeleteToken(BaseModel):
    model_config = ConfigDict(extra="ignore")
    token_id: str


def token_info(token: Token) -> Json:
    return {
        "token_id": token.id,
        "comment": token.comment,
        "creation_time": to_millis(token.created_at),
        "expiry_time": to_millis(token.expires_at) if token.expires_at else -1,
    }


@router.post("/create", response_model=Json)
def create_token(body: CreateToken, session: SessionDep, caller: CallerDep) -> Json:
    principal = session.get(Principal, caller.principal_id)
    assert principal is not None
    lifetime = (
        body.lifetime_seconds if body.lifetime_seconds and body.lifetime_seconds > 0 else None
    )
    issued = issue_token(session, principal, comment=body.comment or "", lifetime_seconds=lifetime)
    info = token_info(issued.record)
    session.commit()
    return {"token_value": issued.value, "token_info": info}


@router.get("/list", response_model=Json)
def list_tokens(session: SessionDep, caller: CallerDep) -> Json:
    tokens = session.scalars(
        select(Token)
        .where(Token.principal_id == caller.principal_id, Token.revoked_at.is_(None))
        .order_by(Token.created_at)
    ).all()
    return {"token_infos": [token_info(t) for t in tokens]}


@router.post("/delete", response_model=Json)
def delete_token(
    body: DeleteToken, session: SessionDep, caller: CallerDep, plane: PlaneDep
) -> Json:
    token = session.get(Token, body.token_id)
    if token is None or token.principal_id != caller.principal_id or token.revoked_at:
        raise NotFound(f"token {body.token_id!r} does not exist")
    token.revoked_at = utcnow()  # kept (revoked) so audits can still name it
    session.commit()
    if plane.gateway is not None:  # this process stops honouring it at once (others: TTL)
        plane.gateway.targets.forget()
    return {}
