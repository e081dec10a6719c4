"""`GET /api/2.0/billing/estimate?endpoint_name=&start_time=&end_time=`: an endpoint's
actual cost over a window and what the same traffic would have cost in the other pricing
mode, with the break-even sustained tokens/s (`billing.estimate`)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from fastapi import APIRouter
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from billing.estimate import HourTokens, compare_modes
from billing.ledger import EndpointUsage
from billing.ledger.models import ENDPOINT_NAME_LENGTH
from billing.metering import UsageFilters, live_records
from billing.metering.hours import sql_hour
from billing.pricing import line_amount
from billing.ratecard import UnknownRate
from billing.records import UsageRecord
from billing.skus import region_class
from control_plane.api.deps import CallerDep, PlaneDep, SessionDep
from control_plane.billing_api.listing import Scope, billing_scope, plain_filter, time_range
from control_plane.billing_api.schemas import ActualCost, AlternativeCost, Estimate, Traffic
from control_plane.db.models import Endpoint, Workspace
from control_plane.errors import InvalidParameter, NotFound
from control_plane.ids import utcnow
from control_plane.placement import WorkspacePlacement, stored_placement
from control_plane.settings import Settings

router = APIRouter(prefix="/api/2.0/billing", tags=["billing"])


@router.get("/estimate", response_model=Estimate)
def estimate(
    session: SessionDep,
    caller: CallerDep,
    plane: PlaneDep,
    endpoint_name: str,
    start_time: str,
    end_time: str,
    workspace_id: str | None = None,
) -> Estimate:
    plain_filter("endpoint_name", endpoint_name, ENDPOINT_NAME_LENGTH)
    scope = billing_scope(caller, workspace_id)
    start, end = time_range(start_time, end_time)
    if start is None or end is None:
        raise InvalidParameter("give start_time and end_time (ISO 8601)")
    query = select(Endpoint).where(
        Endpoint.account_id == scope.account_id, Endpoint.name == endpoint_name
    )
    if scope.workspace_id is not None:  # its own endpoints and the shared ones
        query = query.where(
            or_(Endpoint.workspace_id == scope.workspace_id, Endpoint.workspace_id.is_(None))
        )
    endpoint = session.scalars(query).first()
    if endpoint is None or endpoint.config is None:
        raise NotFound(f"endpoint {endpoint_name!r} does not exist or has no live config")
    context = plane.billing.context
    try:
        card = plane.rate_cards.at(start)
    except UnknownRate as exc:
        raise InvalidParameter(f"no prices for start_time {start_time}: {exc}") from None
    entity = endpoint.config.served_entities[0]  # the priced model: the first entity's
    family = entity.model_family
    throughput = card.throughput(family, entity.entity_name, entity.entity_version)
    comparison = compare_modes(
        _hourly_tokens(session, scope, endpoint_name, start, end),
        int((end - start).total_seconds()),
        card.token_rates(family),
        throughput,
    )
    filters = UsageFilters(start, end, endpoint_name, _workspaces(scope))
    records = [r for r in _stored(session, scope, start, end) if filters.accepts(r)]
    records += live_records(session, context, utcnow(), filters)
    actual = sum((r.usage_quantity for r in records), Decimal(0))
    provisioned = any(r.usage_type == "COMPUTE_TIME" for r in records)
    where = _placement(session, endpoint.workspace_id, plane.settings)
    price = card.dollars_per_dbu(
        where.cloud, region_class(where.region), plane.settings.billing.tier
    )
    other_dbu = comparison.pay_per_token_dbu if provisioned else comparison.provisioned_dbu

    mode, other = (
        ("provisioned_throughput", "pay_per_token")
        if provisioned
        else ("pay_per_token", "provisioned_throughput")
    )
    return Estimate(
        endpoint_name=endpoint_name,
        start_time=start,
        end_time=end,
        actual=ActualCost(mode=mode, dbu=actual, dollars=line_amount(actual, price)),
        alternative=AlternativeCost(
            mode=other,
            dbu=other_dbu,
            dollars=line_amount(other_dbu, price),
            provisioned_chunks=comparison.provisioned_chunks,
            throughput_chunk_size=throughput.chunk_size,
        ),
        break_even_tokens_per_s=comparison.break_even_tokens_per_s,
        traffic=Traffic(
            input_tokens=comparison.input_tokens,
            output_tokens=comparison.output_tokens,
            peak_tokens_per_s=comparison.peak_tokens_per_s,
            output_share=comparison.output_share,
        ),
        dollars_per_dbu=price,
    )


def _workspaces(scope: Scope) -> list[str | None] | None:
    return None if scope.workspace_id is None else [scope.workspace_id]


def _hourly_tokens(
    session: Session, scope: Scope, endpoint_name: str, start: datetime, end: datetime
) -> list[HourTokens]:
    hour = sql_hour(EndpointUsage.request_time, session.get_bind().dialect.name)
    rows = session.execute(
        select(
            hour,
            func.sum(EndpointUsage.input_token_count),
            func.sum(EndpointUsage.output_token_count),
        )
        .where(
            *scope.clause(EndpointUsage.account_id, EndpointUsage.workspace_id),
            EndpointUsage.endpoint_name == endpoint_name,
            EndpointUsage.request_time >= start,
            EndpointUsage.request_time < end,
        )
        .group_by(hour)
    ).all()
    return [HourTokens(int(i or 0), int(o or 0)) for _, i, o in rows]


def _stored(session: Session, scope: Scope, start: datetime, end: datetime) -> list[UsageRecord]:
    return list(
        session.scalars(
            select(UsageRecord).where(
                *scope.clause(UsageRecord.account_id, UsageRecord.workspace_id),
                UsageRecord.usage_end_time > start,
                UsageRecord.usage_start_time < end,
            )
        )
    )


def _placement(
    session: Session, workspace_id: str | None, settings: Settings
) -> WorkspacePlacement:
    """Where the endpoint's workspace lives (its $/DBU); the installation's for a shared one."""
    workspace = None if workspace_id is None else session.get(Workspace, workspace_id)
    if workspace is None:
        return stored_placement(None, None, settings)
    return stored_placement(workspace.cloud, workspace.region, settings)
