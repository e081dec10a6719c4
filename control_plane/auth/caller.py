"""Who is calling: the principal behind a bearer token, with its workspace and groups."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.auth.tokens import find_active_token
from control_plane.db.models import GroupMember, Workspace
from control_plane.errors import Unauthenticated
from control_plane.ids import utcnow


@dataclass(frozen=True)
class Caller:
    principal_id: int
    name: str
    kind: str  # user | service_principal
    workspace_id: str
    account_id: str
    is_workspace_admin: bool
    is_account_admin: bool
    group_ids: frozenset[int]
    token_id: str

    @property
    def principal_ids(self) -> frozenset[int]:
        """The caller and every group it belongs to (for permission lookups)."""
        return self.group_ids | {self.principal_id}


def authenticate(session: Session, authorization: str | None) -> Caller:
    """401 for a missing, malformed, unknown, expired or revoked token."""
    if not authorization:
        raise Unauthenticated("missing Authorization header; send 'Authorization: Bearer <token>'")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthenticated("Authorization must be 'Bearer <token>'")
    found = find_active_token(session, value.strip(), utcnow())
    if found is None:
        raise Unauthenticated("invalid, expired or revoked access token")
    token, principal = found
    workspace = session.get(Workspace, principal.workspace_id)
    assert workspace is not None, "principals always belong to a workspace"
    groups = session.scalars(
        select(GroupMember.group_id).where(GroupMember.member_id == principal.id)
    ).all()
    return Caller(
        principal_id=principal.id,
        name=principal.name,
        kind=principal.kind,
        workspace_id=principal.workspace_id,
        account_id=workspace.account_id,
        is_workspace_admin=principal.is_workspace_admin or principal.is_account_admin,
        is_account_admin=principal.is_account_admin,
        group_ids=frozenset(groups),
        token_id=token.id,
    )
