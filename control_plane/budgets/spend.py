"""What a budget's thresholds have spent in their period so far: the billing API's records
(the stored hours plus the hours metering has not stored yet, `billing.metering.live`), so
a budget and the usage listing agree to the unit. Each record counts in DBUs, or in list-
price dollars at the $/DBU of the cloud and region its workspace lives in (the rate card in
force at the record's hour), unrounded.

The stored part of a period changes only when metering writes: it is read again only when
a cheap fingerprint of it (count and sum) moves, so a refresh every second costs one
aggregate query plus the open hours' records."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing.metering import MeteringContext, UsageFilters, live_records
from billing.placements import Placements
from billing.ratecard import RateCards
from billing.records import UsageRecord
from billing.skus import region_class
from control_plane.budgets.config import Alert, BudgetFilter, QuantityType, TimePeriod


def period_start(period: TimePeriod, now: datetime) -> datetime:
    """Where the period holding `now` starts (UTC): the month's first day, or the day."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day.replace(day=1) if period == TimePeriod.MONTH else day


@dataclass(frozen=True)
class Line:
    """One record, as much as budgets need of it."""

    workspace_id: str | None
    endpoint_name: str
    tags: dict[str, str]
    hour: datetime
    dbu: Decimal

    @classmethod
    def of(cls, record: UsageRecord) -> Line:
        return cls(
            workspace_id=record.workspace_id,
            endpoint_name=str((record.usage_metadata or {}).get("endpoint_name") or ""),
            tags=dict(record.custom_tags or {}),
            hour=record.usage_start_time,
            dbu=Decimal(record.usage_quantity),
        )


def matches(
    budget_filter: BudgetFilter, workspace_id: str | None, endpoint: str, tags: dict[str, str]
) -> bool:
    """Whether usage of `workspace_id`'s endpoint `endpoint` (carrying `tags`) counts."""
    clause = budget_filter.workspace_id
    if clause is not None and (workspace_id is None or workspace_id not in clause.values):
        return False
    named = budget_filter.endpoint_name
    if named is not None and endpoint not in named.values:
        return False
    return all(tags.get(t.key) in t.value.values for t in budget_filter.tags)


@dataclass
class Pricer:
    """DBU → list-price dollars where each workspace lives."""

    rate_cards: RateCards
    placements: Placements
    tier: str

    def dollars_per_dbu(self, workspace_id: str | None, hour: datetime) -> Decimal:
        cloud, region = self.placements.of(workspace_id)
        return self.rate_cards.at(hour).dollars_per_dbu(cloud, region_class(region), self.tier)

    def amount(self, line: Line, quantity: QuantityType) -> Decimal:
        if quantity == QuantityType.DBU:
            return line.dbu
        return line.dbu * self.dollars_per_dbu(line.workspace_id, line.hour)


@dataclass
class _Stored:
    fingerprint: tuple[Any, ...]
    lines: list[Line]


@dataclass
class SpendReader:
    """Reads an account's lines since a start; caches the stored part by fingerprint."""

    context: MeteringContext
    _stored: dict[tuple[str, datetime], _Stored] = field(default_factory=dict)

    def live(self, session: Session, start: datetime, now: datetime) -> dict[str, list[Line]]:
        """The hours metering has not stored yet, by account (one read for every account)."""
        by_account: dict[str, list[Line]] = {}
        for record in live_records(session, self.context, now, UsageFilters(start_time=start)):
            if record.usage_start_time >= start:
                by_account.setdefault(record.account_id, []).append(Line.of(record))
        return by_account

    def stored(self, session: Session, account_id: str, start: datetime) -> list[Line]:
        """The account's stored records since `start` (read again only when they changed)."""
        where = (UsageRecord.account_id == account_id, UsageRecord.usage_start_time >= start)
        fingerprint = tuple(
            session.execute(
                select(func.count(), func.sum(UsageRecord.usage_quantity)).where(*where)
            ).one()
        )
        cached = self._stored.get((account_id, start))
        if cached is not None and cached.fingerprint == fingerprint:
            return cached.lines
        lines = [Line.of(r) for r in session.scalars(select(UsageRecord).where(*where))]
        self._stored[(account_id, start)] = _Stored(fingerprint, lines)
        return lines


def alert_spend(
    lines: Iterable[Line],
    budget_filter: BudgetFilter,
    alert: Alert,
    start: datetime,
    pricer: Pricer,
) -> Decimal:
    """What `alert` has spent since `start` (its period's start), unrounded."""
    return sum(
        (
            pricer.amount(line, alert.quantity_type)
            for line in lines
            if line.hour >= start
            and matches(budget_filter, line.workspace_id, line.endpoint_name, line.tags)
        ),
        Decimal(0),
    )
