"""Managing principals and their tokens: who may, and offboarding (deactivation, deletion).

Scope: a workspace admin manages the users, service principals and tokens of its own
workspace; an account admin those of every workspace of its account. Anything outside the
caller's scope does not exist for it (404). An account admin's principal and tokens are
managed by account admins only (403 for a workspace admin), and nobody deactivates or
deletes itself (400), so an installation cannot lock its last admin out.

Deactivating a principal revokes every token it has and makes it unable to authenticate
(`find_active_token` also checks `active`); reactivating it restores no token (an admin
mints it a new one). Deleting one deactivates it, drops its group memberships and endpoint
grants, and leaves a tombstone: the row stays (kind `deleted:<id>`, `deleted_at` set) so
its revoked tokens can still be named in audits and its id is never handed to another
principal (SQLite would reuse the highest deleted id, and a SCIM client retrying a DELETE
would then delete someone else); its name is free again.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import delete, or_
from sqlalchemy.orm import Session

from control_plane.auth.caller import Caller
from control_plane.auth.tokens import revoke_all
from control_plane.db.models import EndpointPermission, GroupMember, Principal, Workspace
from control_plane.errors import InvalidParameter, NotFound, PermissionDenied


class PrincipalKind(StrEnum):
    USER = "user"
    SERVICE_PRINCIPAL = "service_principal"
    GROUP = "group"

    @property
    def label(self) -> str:
        return self.value.replace("_", " ")


def require_admin(caller: Caller, what: str) -> None:
    if not caller.is_workspace_admin:
        raise PermissionDenied(f"only workspace admins manage {what}")


def in_scope(session: Session, caller: Caller, workspace_id: str) -> bool:
    """Whether `caller` (an admin) manages the principals of `workspace_id`."""
    if workspace_id == caller.workspace_id:
        return True
    if not caller.is_account_admin:
        return False
    workspace = session.get(Workspace, workspace_id)
    return workspace is not None and workspace.account_id == caller.account_id


def scoped_workspace(session: Session, caller: Caller, workspace_id: str | None) -> str:
    """The workspace a listing covers: the caller's, or (account admins) the one named."""
    if workspace_id is None:
        return caller.workspace_id
    if not in_scope(session, caller, workspace_id):
        raise NotFound(f"workspace {workspace_id!r} does not exist")
    return workspace_id


def managed_principal(
    session: Session, caller: Caller, principal_id: str, kind: PrincipalKind
) -> Principal:
    """The principal of `kind` with SCIM id `principal_id` that an admin caller manages."""
    require_admin(caller, f"{kind.label}s")
    number = _as_id(principal_id)
    principal = None if number is None else session.get(Principal, number)
    if (
        principal is None
        or principal.kind != kind
        or not in_scope(session, caller, principal.workspace_id)
    ):
        raise NotFound(f"no such {kind.label} in this workspace")
    return principal


def _as_id(text: str) -> int | None:
    """A principal id (a 32-bit integer in the database), or None for anything else."""
    if not (text.isascii() and text.isdigit() and len(text) <= 10):
        return None
    number = int(text)
    return number if 0 < number < 2**31 else None


def require_may_manage(caller: Caller, principal: Principal) -> None:
    """403 when a workspace admin reaches for an account admin's principal or tokens."""
    if principal.is_account_admin and not caller.is_account_admin:
        raise PermissionDenied("only account admins manage an account admin or its tokens")


def _require_may_offboard(caller: Caller, principal: Principal, action: str) -> None:
    if principal.id == caller.principal_id:
        raise InvalidParameter(f"you cannot {action} yourself; ask another admin")
    require_may_manage(caller, principal)


def set_active(
    session: Session, caller: Caller, principal: Principal, active: bool, now: datetime
) -> int:
    """Activate or deactivate; deactivating revokes every token at once. Returns how many
    tokens were revoked. The caller commits, then forgets cached resolutions."""
    if active:
        require_may_manage(caller, principal)
        principal.active = True
        return 0
    _require_may_offboard(caller, principal, "deactivate")
    principal.active = False
    return revoke_all(session, principal.id, now)


def remove(session: Session, caller: Caller, principal: Principal, now: datetime) -> None:
    """Delete a principal: revoke its tokens, drop its memberships and grants, and turn
    the row into a tombstone (the caller commits)."""
    _require_may_offboard(caller, principal, "delete")
    revoke_all(session, principal.id, now)
    session.execute(
        delete(GroupMember).where(
            or_(GroupMember.member_id == principal.id, GroupMember.group_id == principal.id)
        )
    )
    session.execute(
        delete(EndpointPermission).where(EndpointPermission.principal_id == principal.id)
    )
    principal.active = False
    principal.is_workspace_admin = principal.is_account_admin = False
    principal.deleted_at = now
    principal.kind = f"{TOMBSTONE}{principal.id}"  # no lookup by kind finds it again


TOMBSTONE = "deleted:"  # kind prefix of a deleted principal's row
