"""`GET /api/2.0/billing/summary`: what the billing dashboard's overview and time series show
— spend over a range by SKU, by endpoint and per hour or day, and the current month's spend
with a forecast to its end.

The figures come from the records `GET /usage` lists for the same range (the stored hours
plus the live ones; a record counts when its hour overlaps the range), priced exactly as
budgets price them (`control_plane.budgets.spend.Pricer`: each record's DBUs at the $/DBU of
its workspace's cloud and region, under the rate card in force at its hour). Every dollar
figure is the exact sum rounded half-even to the cent once; DBUs are exact. The records
are read as plain rows (six columns, no ORM objects) and summed in Python, since SQLite
holds exact decimals as text.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any, TypeVar

from fastapi import APIRouter
from sqlalchemy import String, func, select, type_coerce
from sqlalchemy.orm import Session

from billing.metering import UsageFilters, live_records
from billing.placements import load_placements
from billing.pricing import CENT, EXACT
from billing.records import UsageRecord
from control_plane.api.deps import CallerDep, PlaneDep, SessionDep
from control_plane.billing_api.listing import Scope, billing_scope, time_range
from control_plane.billing_api.schemas import (
    BillingSummary,
    EndpointSpend,
    Granularity,
    MonthSpend,
    SeriesGroup,
    SeriesPoint,
    SkuSpend,
    Spend,
)
from control_plane.budgets.spend import Pricer
from control_plane.errors import InvalidParameter
from control_plane.ids import utcnow
from control_plane.state import ControlPlane

router = APIRouter(prefix="/api/2.0/billing", tags=["billing"])

MAX_HOURLY_RANGE = timedelta(days=31)  # 50 endpoints x 744 hours: a chart's worth
MAX_RANGE = timedelta(days=400)
FORECAST_DBU = Decimal("0.000001")  # an estimate: six places, not the records' eighteen
K = TypeVar("K")
# workspace, SKU, endpoint id, endpoint name, hour and DBUs (the last two as the driver reads)
_RawRecord = tuple[str | None, str, str, str, object, str | Decimal]


@dataclass(frozen=True)
class _Hour:
    """What a record's hour (and workspace) decide."""

    price: Decimal  # $/DBU
    bucket: datetime
    in_month: bool
    in_range: bool


@dataclass
class Sum:
    """Exact DBUs and dollars."""

    dbu: Decimal = Decimal(0)
    dollars: Decimal = Decimal(0)

    def add(self, dbu: Decimal, dollars: Decimal) -> None:
        self.dbu += dbu
        self.dollars += dollars

    def shown(self) -> Spend:
        return Spend(dbu=self.dbu, dollars=cents(self.dollars))


@dataclass
class Totals:
    """Sums by SKU, by endpoint and by (bucket, key)."""

    total: Sum = field(default_factory=Sum)
    by_sku: dict[str, Sum] = field(default_factory=lambda: defaultdict(Sum))
    by_endpoint: dict[tuple[str, str, str | None], Sum] = field(
        default_factory=lambda: defaultdict(Sum)
    )
    series: dict[tuple[datetime, str], Sum] = field(default_factory=lambda: defaultdict(Sum))


def cents(dollars: Decimal) -> Decimal:
    return dollars.quantize(CENT, rounding=ROUND_HALF_EVEN)


@router.get("/summary", response_model=BillingSummary)
def summary(
    session: SessionDep,
    caller: CallerDep,
    plane: PlaneDep,
    start_time: str,
    end_time: str,
    granularity: Granularity = Granularity.DAY,
    group_by: SeriesGroup = SeriesGroup.ENDPOINT,
    workspace_id: str | None = None,
) -> BillingSummary:
    """Spend over [start_time, end_time) and this month's, for the caller's scope."""
    scope = billing_scope(caller, workspace_id)
    start, end = chart_range(start_time, end_time, granularity)
    now = utcnow()
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    month_end = (month_start + timedelta(days=32)).replace(day=1)
    pricer = pricer_for(session, plane)
    hours: dict[tuple[str | None, object], _Hour] = {}
    cells: dict[tuple[Any, ...], Decimal] = defaultdict(Decimal)
    with localcontext(EXACT):  # sums of 18-place DBUs: never rounded
        for workspace, sku, endpoint_id, name, stored_hour, dbu in read_rows(
            session, plane, scope, min(start, month_start), max(end, now)
        ):
            # What a record's hour decides (its $/DBU, bucket, month and range) is worked out
            # once per (workspace, hour); the rows are then summed in cells of equal price.
            hour = hours.get((workspace, stored_hour))
            if hour is None:
                moment = _utc(stored_hour)
                hour = hours[(workspace, stored_hour)] = _Hour(
                    price=pricer.dollars_per_dbu(workspace, moment),
                    bucket=bucket(moment, granularity),
                    in_month=moment >= month_start,
                    in_range=start - timedelta(hours=1) < moment < end,  # its hour overlaps
                )
            key = name if group_by == SeriesGroup.ENDPOINT else sku
            cells[(hour, workspace, sku, endpoint_id, name, key)] += Decimal(dbu)
    in_range, month = Totals(), Sum()
    with localcontext(EXACT):
        for (hour, workspace, sku, endpoint_id, name, key), dbu in cells.items():
            dollars = dbu * hour.price
            if hour.in_month:
                month.add(dbu, dollars)
            if not hour.in_range:
                continue
            in_range.total.add(dbu, dollars)
            in_range.by_sku[sku].add(dbu, dollars)
            in_range.by_endpoint[(name, endpoint_id, workspace)].add(dbu, dollars)
            in_range.series[(hour.bucket, key)].add(dbu, dollars)
    return BillingSummary(
        start_time=start,
        end_time=end,
        granularity=granularity,
        group_by=group_by,
        currency=plane.rate_cards.at(now).currency_code,
        total=in_range.total.shown(),
        by_sku=[
            SkuSpend(sku_name=sku, **s.shown().model_dump())
            for sku, s in _largest_first(in_range.by_sku)
        ],
        by_endpoint=[
            EndpointSpend(
                endpoint_name=name, endpoint_id=eid, workspace_id=ws, **s.shown().model_dump()
            )
            for (name, eid, ws), s in _largest_first(in_range.by_endpoint)
        ],
        series=[
            SeriesPoint(bucket_start=when, key=key, **s.shown().model_dump())
            for (when, key), s in sorted(in_range.series.items())
        ],
        month=MonthSpend(
            month=month_start.strftime("%Y-%m"),
            month_to_date=month.shown(),
            forecast=forecast(month, now - month_start, month_end - month_start),
        ),
    )


def chart_range(
    start_time: str, end_time: str, granularity: Granularity
) -> tuple[datetime, datetime]:
    """[start, end) of a chart: both given, at most `MAX_RANGE`, and at most
    `MAX_HOURLY_RANGE` in hours; a 400 that says which otherwise."""
    start, end = time_range(start_time, end_time)
    if start is None or end is None:
        raise InvalidParameter("give start_time and end_time (ISO 8601)")
    if end - start > MAX_RANGE:
        raise InvalidParameter(f"the range may span at most {MAX_RANGE.days} days")
    if granularity == Granularity.HOUR and end - start > MAX_HOURLY_RANGE:
        raise InvalidParameter(
            f"granularity HOUR covers at most {MAX_HOURLY_RANGE.days} days; use DAY"
        )
    return start, end


def read_rows(
    session: Session, plane: ControlPlane, scope: Scope, start: datetime, end: datetime
) -> list[_RawRecord]:
    """The scope's records whose hour overlaps [start, end), stored then live, as (workspace,
    SKU, endpoint id, endpoint name, hour, DBUs); the hour and DBUs as the driver gives them
    (SQLite: text; `_utc` and `Decimal` read both), since the column types' processing,
    row by row, costs five times the query."""
    name = UsageRecord.usage_metadata["endpoint_name"].as_string()
    stored = session.connection().execute(
        select(
            UsageRecord.workspace_id,
            UsageRecord.sku_name,
            UsageRecord.endpoint_id,
            func.coalesce(name, UsageRecord.endpoint_id),
            type_coerce(UsageRecord.usage_start_time, String),
            type_coerce(UsageRecord.usage_quantity, String),
        ).where(
            *scope.clause(UsageRecord.account_id, UsageRecord.workspace_id),
            UsageRecord.usage_end_time > start,
            UsageRecord.usage_start_time < end,
        )
    )
    rows: list[_RawRecord] = [(w, s, e, n, h, q) for w, s, e, n, h, q in stored]
    workspaces = None if scope.workspace_id is None else [scope.workspace_id]
    filters = UsageFilters(start_time=start, end_time=end, workspace_ids=workspaces)
    for record in live_records(session, plane.billing.context, utcnow(), filters):
        if record.account_id == scope.account_id:
            shown = str((record.usage_metadata or {}).get("endpoint_name") or "")
            rows.append(
                (
                    record.workspace_id,
                    record.sku_name,
                    record.endpoint_id,
                    shown or record.endpoint_id,
                    record.usage_start_time,
                    record.usage_quantity,
                )
            )
    return rows


def _utc(stored: object) -> datetime:
    """A stored `UtcDateTime` as the driver returned it, as an aware UTC datetime."""
    # SQLite's text is 'YYYY-MM-DD HH:MM:SS[.ffffff]' in UTC
    moment = stored if isinstance(stored, datetime) else datetime.fromisoformat(str(stored))
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def pricer_for(session: Session, plane: ControlPlane) -> Pricer:
    context = plane.billing.context
    placements = load_placements(session.connection(), context.cloud, context.region)
    return Pricer(plane.rate_cards, placements, plane.settings.billing.tier)


def bucket(hour: datetime, granularity: Granularity) -> datetime:
    hour = hour.astimezone(UTC)
    if granularity == Granularity.DAY:
        return hour.replace(hour=0, minute=0, second=0, microsecond=0)
    return hour.replace(minute=0, second=0, microsecond=0)


def forecast(month: Sum, elapsed: timedelta, length: timedelta) -> Spend:
    """Month to date scaled linearly to the whole month."""
    if elapsed <= timedelta(0):
        return month.shown()
    ratio = Decimal(length.total_seconds()) / Decimal(elapsed.total_seconds())
    return Spend(
        dbu=(month.dbu * ratio).quantize(FORECAST_DBU, rounding=ROUND_HALF_EVEN),
        dollars=cents(month.dollars * ratio),
    )


def _largest_first(sums: Mapping[K, Sum]) -> list[tuple[K, Sum]]:
    return sorted(sums.items(), key=lambda item: (-item[1].dbu, str(item[0])))
