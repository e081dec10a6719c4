"""`GET /api/2.0/billing/endpoint-stats`: one endpoint's traffic over a range — requests,
errors, tokens in and out, latency percentiles and a series per hour or day — from its
request-level usage rows (`endpoint_usage`, the rows `GET /endpoint-usage` lists).

Counts and sums run in the database (GROUP BY the bucket); a percentile is the nearest-rank
value read with ORDER BY ... OFFSET, so no row leaves the database for it, on SQLite and
PostgreSQL alike.
"""

from __future__ import annotations

import math
from datetime import datetime
from decimal import Decimal
from typing import Any

from fastapi import APIRouter
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from billing.ledger import EndpointUsage
from billing.ledger.models import ENDPOINT_NAME_LENGTH
from billing.metering.hours import sql_hour
from control_plane.api.deps import CallerDep, SessionDep
from control_plane.billing_api.listing import Scope, billing_scope, plain_filter
from control_plane.billing_api.schemas import EndpointStats, EndpointStatsPoint, Granularity
from control_plane.billing_api.summary import bucket, chart_range

router = APIRouter(prefix="/api/2.0/billing", tags=["billing"])

ERROR_STATUS = 400  # a row with this status or above is an error


@router.get("/endpoint-stats", response_model=EndpointStats)
def endpoint_stats(
    session: SessionDep,
    caller: CallerDep,
    endpoint_name: str,
    start_time: str,
    end_time: str,
    granularity: Granularity = Granularity.DAY,
    workspace_id: str | None = None,
) -> EndpointStats:
    plain_filter("endpoint_name", endpoint_name, ENDPOINT_NAME_LENGTH)
    scope = billing_scope(caller, workspace_id)
    start, end = chart_range(start_time, end_time, granularity)
    where = _where(scope, endpoint_name, start, end)
    table = EndpointUsage
    hour = sql_hour(table.request_time, session.get_bind().dialect.name)
    errors = func.sum(case((table.status_code >= ERROR_STATUS, 1), else_=0))
    by_hour = session.execute(
        select(
            hour,
            func.count(),
            errors,
            func.sum(table.input_token_count),
            func.sum(table.output_token_count),
        )
        .where(*where)
        .group_by(hour)
    ).all()
    points: dict[datetime, list[int]] = {}
    for when, requests, failed, tokens_in, tokens_out in by_hour:
        sums = points.setdefault(bucket(when, granularity), [0, 0, 0, 0])
        for index, value in enumerate((requests, failed, tokens_in, tokens_out)):
            sums[index] += int(value or 0)
    requests, failed, tokens_in, tokens_out = (sum(p[i] for p in points.values()) for i in range(4))
    return EndpointStats(
        endpoint_name=endpoint_name,
        start_time=start,
        end_time=end,
        granularity=granularity,
        requests=requests,
        errors=failed,
        error_rate=Decimal(failed) / Decimal(requests) if requests else Decimal(0),
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        p50_latency_ms=percentile(session, where, 50),
        p99_latency_ms=percentile(session, where, 99),
        series=[
            EndpointStatsPoint(
                bucket_start=when,
                requests=p[0],
                errors=p[1],
                input_tokens=p[2],
                output_tokens=p[3],
            )
            for when, p in sorted(points.items())
        ],
    )


def _where(scope: Scope, endpoint_name: str, start: datetime, end: datetime) -> list[Any]:
    table = EndpointUsage
    return [
        *scope.clause(table.account_id, table.workspace_id),
        table.endpoint_name == endpoint_name,
        table.request_time >= start,
        table.request_time < end,
    ]


def percentile(session: Session, where: list[Any], p: int) -> int | None:
    """The nearest-rank `p`th percentile of the rows' durations (None without any)."""
    duration = EndpointUsage.execution_duration_ms
    timed = [*where, duration.is_not(None)]
    count = session.scalar(select(func.count()).where(*timed)) or 0
    if count == 0:
        return None
    rank = max(1, math.ceil(p / 100 * count))  # 1-based
    value = session.scalar(
        select(duration).where(*timed).order_by(duration).offset(rank - 1).limit(1)
    )
    return None if value is None else int(value)
