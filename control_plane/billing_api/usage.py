"""`GET /api/2.0/billing/endpoint-usage`: request-level usage rows (`endpoint_usage`), a page
at a time.

Pages follow Databricks list APIs: `page_size` rows (default `DEFAULT_PAGE_SIZE`, at most
`MAX_PAGE_SIZE`), and a `next_page_token` while more rows match; passing it back as
`page_token` (with the same filters) answers the next page. The order is stable —
`request_time`, then `databricks_request_id` (unique) — and the token is a keyset cursor
(the last row's place in that order), so rows written while a caller pages through never
shift a page, and no row is skipped or repeated.

The listing never fails on what is stored, whoever stored it: `usage_context` is read as
the JSON text the database holds and parsed here, so a document the declared shape (string
keys and values) does not fit is shown, not refused: a non-string value as its JSON text, and
a document that is not a JSON object (or not JSON) as null. Text no response can carry — NUL
and lone surrogates, which a JSON column may hold as escapes — is shown as U+FFFD.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from sqlalchemy import Text, and_, cast, or_, select

from billing.ledger import EndpointUsage
from billing.ledger.models import ENDPOINT_NAME_LENGTH, REQUEST_ID_LENGTH
from control_plane.api.deps import CallerDep, SessionDep
from control_plane.api.paging import PageCursor
from control_plane.billing_api.listing import (
    CSV,
    UNSTORABLE,
    billing_scope,
    listing,
    plain_filter,
    time_range,
    wants_csv,
)
from control_plane.billing_api.schemas import EndpointUsageList, EndpointUsageRow

router = APIRouter(prefix="/api/2.0/billing", tags=["billing"])

DEFAULT_PAGE_SIZE = 1_000
MAX_PAGE_SIZE = 10_000
NEXT_PAGE_HEADER = "X-Next-Page-Token"  # CSV pages carry the token here


class EndpointUsagePage(BaseModel):
    """One page of usage rows, oldest first."""

    endpoint_usage: list[EndpointUsageRow]
    next_page_token: str | None = Field(
        default=None,
        description="pass as page_token for the next page; absent on the last page",
    )


class _Cursor(PageCursor):
    """Where a page ended: the last row's (request_time, databricks_request_id)."""

    id: str = Field(min_length=1, max_length=REQUEST_ID_LENGTH)


PageSize = Annotated[
    int,
    Query(ge=1, le=MAX_PAGE_SIZE, description=f"rows per page (default {DEFAULT_PAGE_SIZE})"),
]


@router.get("/endpoint-usage", response_model=EndpointUsagePage, responses=CSV)
def endpoint_usage(
    request: Request,
    session: SessionDep,
    caller: CallerDep,
    start_time: str | None = None,
    end_time: str | None = None,
    endpoint_name: str | None = None,
    workspace_id: str | None = None,
    page_size: PageSize = DEFAULT_PAGE_SIZE,
    page_token: str | None = None,
) -> Response:
    """One row per accepted query in [start_time, end_time), oldest first, `page_size` rows
    a page; `next_page_token` (CSV: the X-Next-Page-Token header) fetches the next."""
    plain_filter("endpoint_name", endpoint_name, ENDPOINT_NAME_LENGTH)
    scope = billing_scope(caller, workspace_id)
    start, end = time_range(start_time, end_time)
    table = EndpointUsage
    columns = [
        column for name, column in table.__table__.columns.items() if name != "usage_context"
    ]
    query = select(*columns, cast(table.usage_context, Text).label("usage_context")).where(
        *scope.clause(table.account_id, table.workspace_id)
    )
    if start is not None:
        query = query.where(table.request_time >= start)
    if end is not None:
        query = query.where(table.request_time < end)
    if endpoint_name is not None:
        query = query.where(table.endpoint_name == endpoint_name)
    if page_token is not None:
        after = _Cursor.of(page_token)
        query = query.where(
            or_(
                table.request_time > after.t,
                and_(table.request_time == after.t, table.databricks_request_id > after.id),
            )
        )
    query = query.order_by(table.request_time, table.databricks_request_id)
    found = session.execute(query.limit(page_size + 1)).mappings().all()
    rows = [_shown(dict(row)) for row in found[:page_size]]
    next_token = None
    if len(found) > page_size:
        last = found[page_size - 1]
        next_token = _Cursor(t=last["request_time"], id=last["databricks_request_id"]).token()
    if wants_csv(request):
        response = listing(request, EndpointUsageList(endpoint_usage=rows))
        if next_token is not None:
            response.headers[NEXT_PAGE_HEADER] = next_token
        return response
    page = EndpointUsagePage(endpoint_usage=rows, next_page_token=next_token)
    return Response(
        page.model_dump_json(exclude={"next_page_token"} if next_token is None else None),
        media_type="application/json",
    )


def _shown(row: dict[str, Any]) -> EndpointUsageRow:
    """A stored row as the listing shows it (see the module's docstring)."""
    values = {
        name: _text(value) if isinstance(value, str) else value
        for name, value in row.items()
        if name != "usage_context"
    }
    values["usage_context"] = _context(row["usage_context"])
    return EndpointUsageRow.model_validate(values)


def _context(stored: str | None) -> dict[str, str] | None:
    if stored is None:
        return None
    try:
        document = json.loads(stored)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    return {
        _text(key): _text(value if isinstance(value, str) else json.dumps(value))
        for key, value in document.items()
    }


def _text(value: str) -> str:
    return UNSTORABLE.sub("\ufffd", value)
