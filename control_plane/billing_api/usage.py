"""`GET /api/2.0/billing/endpoint-usage`: request-level usage rows (`endpoint_usage`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import select

from billing.ledger import EndpointUsage
from control_plane.api.deps import CallerDep, SessionDep
from control_plane.billing_api.listing import CSV, billing_scope, listing, time_range
from control_plane.billing_api.schemas import EndpointUsageList, EndpointUsageRow

router = APIRouter(prefix="/api/2.0/billing", tags=["billing"])

MAX_ROWS = 100_000


@router.get("/endpoint-usage", response_model=EndpointUsageList, responses=CSV)
def endpoint_usage(
    request: Request,
    session: SessionDep,
    caller: CallerDep,
    start_time: str | None = None,
    end_time: str | None = None,
    endpoint_name: str | None = None,
    workspace_id: str | None = None,
) -> Response:
    """One row per accepted query in [start_time, end_time), oldest first (at most 100,000:
    narrow the range for more)."""
    scope = billing_scope(caller, workspace_id)
    start, end = time_range(start_time, end_time)
    query = select(EndpointUsage).where(
        *scope.clause(EndpointUsage.account_id, EndpointUsage.workspace_id)
    )
    if start is not None:
        query = query.where(EndpointUsage.request_time >= start)
    if end is not None:
        query = query.where(EndpointUsage.request_time < end)
    if endpoint_name is not None:
        query = query.where(EndpointUsage.endpoint_name == endpoint_name)
    rows = session.scalars(query.order_by(EndpointUsage.request_time).limit(MAX_ROWS)).all()
    page = EndpointUsageList(endpoint_usage=[EndpointUsageRow.model_validate(row) for row in rows])
    return listing(request, page)
