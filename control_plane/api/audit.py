"""`GET /api/2.0/audit-log`: the audit log (`control_plane.audit`) of the caller's
workspace, newest first, a page at a time.

For admins only: a workspace admin sees its own workspace's events, an account admin those
of any workspace of its account (`workspace_id`; others do not exist for it: 404); anyone
else gets 403. An event belongs to the workspace of the principal that acted. A failed
authentication has no such principal: it is recorded without a workspace, for operators,
and is in no workspace's listing.

Filters: `start_time` (inclusive) and `end_time` (exclusive), as ISO 8601 with a zone like
the billing listings take them, or as epoch milliseconds like Databricks timestamps;
`action` (an `AuditAction`) and `user_name`. Pages follow Databricks list APIs and the
billing usage listing: `page_size` events (default `DEFAULT_PAGE_SIZE`, at most
`MAX_PAGE_SIZE`) and, while more match, a `next_page_token` to pass back as `page_token`
(with the same filters). The token is a keyset cursor — the last event's time and id — so
events recorded while a caller pages through never shift a page: none is skipped or
repeated.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import and_, or_, select

from control_plane.api.deps import CallerDep, SessionDep
from control_plane.api.paging import PageCursor
from control_plane.audit.actions import AuditAction
from control_plane.audit.events import AuditEvent
from control_plane.auth.principals import scoped_workspace
from control_plane.billing_api.listing import parse_time
from control_plane.db.models import AuditRecord
from control_plane.errors import InvalidParameter, PermissionDenied
from control_plane.text import StorableText

router = APIRouter(prefix="/api/2.0/audit-log", tags=["audit-log"])

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class AuditLogPage(BaseModel):
    """One page of events, newest first."""

    events: list[AuditEvent]
    next_page_token: str | None = Field(
        default=None,
        description="pass as page_token for the next page; absent on the last page",
    )


class _Cursor(PageCursor):
    """Where a page ended: the last event's (event_time, event_id)."""

    id: str = Field(pattern="^[0-9a-f]{32}$")


Moment = Annotated[
    str | None,
    Query(
        max_length=64,
        description="ISO 8601 with a zone (2026-11-26T14:00:00Z; a date alone is its "
        "midnight UTC), or epoch milliseconds",
    ),
]
PageSize = Annotated[
    int,
    Query(ge=1, le=MAX_PAGE_SIZE, description=f"events per page (default {DEFAULT_PAGE_SIZE})"),
]


@router.get("", response_model=AuditLogPage, response_model_exclude_none=True)
def audit_log(
    session: SessionDep,
    caller: CallerDep,
    start_time: Moment = None,
    end_time: Moment = None,
    action: AuditAction | None = None,
    user_name: Annotated[StorableText | None, Query(max_length=255)] = None,
    workspace_id: Annotated[
        StorableText | None,
        Query(
            max_length=32,
            description="for account admins: another workspace of the account",
        ),
    ] = None,
    page_size: PageSize = DEFAULT_PAGE_SIZE,
    page_token: Annotated[str | None, Query(max_length=512)] = None,
) -> AuditLogPage:
    """Audited requests of one workspace in [start_time, end_time), newest first."""
    if not caller.is_workspace_admin:
        raise PermissionDenied("the audit log is for workspace and account admins")
    workspace = scoped_workspace(session, caller, workspace_id)
    start, end = _moment(start_time, "start_time"), _moment(end_time, "end_time")
    if start is not None and end is not None and end <= start:
        raise InvalidParameter("end_time must be after start_time")
    table = AuditRecord
    query = select(table).where(table.workspace_id == workspace)
    if start is not None:
        query = query.where(table.event_time >= start)
    if end is not None:
        query = query.where(table.event_time < end)
    if action is not None:
        query = query.where(table.action == action.value)
    if user_name is not None:
        query = query.where(table.user_name == user_name)
    if page_token is not None:
        before = _Cursor.of(page_token)
        query = query.where(
            or_(
                table.event_time < before.t,
                and_(table.event_time == before.t, table.event_id < before.id),
            )
        )
    query = query.order_by(table.event_time.desc(), table.event_id.desc())
    found = session.scalars(query.limit(page_size + 1)).all()
    events = [AuditEvent.model_validate(row) for row in found[:page_size]]
    next_token = None
    if len(found) > page_size:
        last = events[-1]
        next_token = _Cursor(t=last.event_time, id=last.event_id).token()
    return AuditLogPage(events=events, next_page_token=next_token)


def _moment(value: str | None, name: str) -> datetime | None:
    """Epoch milliseconds (digits only), or ISO 8601 as the billing listings parse it."""
    if value is None:
        return None
    try:
        if value.isascii() and value.isdigit():
            return _EPOCH + timedelta(milliseconds=int(value))
        return parse_time(value, name)
    except OverflowError:
        raise InvalidParameter(f"{name} is out of range") from None
