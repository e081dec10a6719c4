"""`GET /api/2.0/billing/usage` (hourly records: stored ones plus the live, not yet stored
hours) and `GET /api/2.0/billing/list-prices`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import select

from billing.ledger.models import ENDPOINT_NAME_LENGTH
from billing.metering import UsageFilters, live_records
from billing.records import UsageRecord
from control_plane.api.deps import CallerDep, PlaneDep, SessionDep
from control_plane.billing_api.listing import (
    CSV,
    billing_scope,
    listing,
    plain_filter,
    time_range,
)
from control_plane.billing_api.schemas import (
    ListPriceList,
    ListPriceRow,
    UsageRecordList,
    UsageRecordRow,
)
from control_plane.ids import utcnow

router = APIRouter(prefix="/api/2.0/billing", tags=["billing"])


@router.get("/usage", response_model=UsageRecordList, responses=CSV)
def usage(
    request: Request,
    session: SessionDep,
    caller: CallerDep,
    plane: PlaneDep,
    start_time: str | None = None,
    end_time: str | None = None,
    endpoint_name: str | None = None,
    workspace_id: str | None = None,
) -> Response:
    """Records overlapping [start_time, end_time): the stored (closed) hours and, computed
    now, the hours the metering job has not stored yet — so a query shows up at once."""
    plain_filter("endpoint_name", endpoint_name, ENDPOINT_NAME_LENGTH)
    scope = billing_scope(caller, workspace_id)
    start, end = time_range(start_time, end_time)
    query = select(UsageRecord).where(
        *scope.clause(UsageRecord.account_id, UsageRecord.workspace_id)
    )
    if start is not None:
        query = query.where(UsageRecord.usage_end_time > start)
    if end is not None:
        query = query.where(UsageRecord.usage_start_time < end)
    filters = UsageFilters(
        start_time=start,
        end_time=end,
        endpoint_name=endpoint_name,
        workspace_ids=None if scope.workspace_id is None else [scope.workspace_id],
    )
    stored = [
        r
        for r in session.scalars(query.order_by(UsageRecord.usage_start_time))
        if filters.accepts(r)
    ]
    context = plane.billing.context
    live = [
        r
        for r in live_records(session, context, utcnow(), filters)
        if r.account_id == scope.account_id
    ]
    page = UsageRecordList(records=[UsageRecordRow.model_validate(r) for r in stored + live])
    return listing(request, page)


@router.get("/list-prices", response_model=ListPriceList, responses=CSV)
def list_prices(request: Request, caller: CallerDep, plane: PlaneDep) -> Response:
    """Every SKU's $/DBU by cloud, region and tier, across rate-card versions."""
    del caller  # any authenticated principal may read the price list
    prices = plane.rate_cards.list_prices()
    return listing(request, ListPriceList(prices=[ListPriceRow.model_validate(p) for p in prices]))
