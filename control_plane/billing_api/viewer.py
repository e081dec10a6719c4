"""`GET /api/2.0/billing/viewer`: who a token belongs to and which workspaces' billing it may
read — what the billing dashboard needs to offer its workspace switcher. Billing readers
only (workspace and account admins), like every billing route."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from control_plane.api.deps import CallerDep, SessionDep
from control_plane.billing_api.listing import billing_scope
from control_plane.billing_api.schemas import BillingViewer, WorkspaceRef
from control_plane.db.models import Workspace

router = APIRouter(prefix="/api/2.0/billing", tags=["billing"])


@router.get("/viewer", response_model=BillingViewer)
def viewer(session: SessionDep, caller: CallerDep) -> BillingViewer:
    scope = billing_scope(caller, None)  # 403 for principals who read no billing
    query = select(Workspace).where(Workspace.account_id == scope.account_id)
    if scope.workspace_id is not None:
        query = query.where(Workspace.id == scope.workspace_id)
    workspaces = session.scalars(query.order_by(Workspace.name, Workspace.id)).all()
    return BillingViewer(
        user_name=caller.name,
        account_id=caller.account_id,
        workspace_id=caller.workspace_id,
        is_account_admin=caller.is_account_admin,
        is_workspace_admin=caller.is_workspace_admin,
        workspaces=[WorkspaceRef(workspace_id=w.id, name=w.name) for w in workspaces],
    )
