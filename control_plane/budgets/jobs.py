"""The budgets' background pass, every `budgets.refresh_interval_s` in every control plane:
read each budget's spend (`spend`), hand the blocking thresholds and their spend to the
gateway's guard, record each threshold newly crossed in its period — exactly once across
every process: the crossing's key is a primary key, and its webhook deliveries and audit
entry are written in the same transaction — then send the webhooks that are due."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from billing.metering import MeteringContext
from billing.placements import load_placements
from billing.ratecard import RateCards
from billing.tags import tags_of
from control_plane.audit.events import Actor, AuditResult
from control_plane.budgets.guard import BudgetGuard, Limit, Snapshot
from control_plane.budgets.settings import BudgetSettings
from control_plane.budgets.spend import Pricer, SpendReader, alert_spend, period_start
from control_plane.budgets.webhooks import deliver_due
from control_plane.db.models import AuditRecord, Budget, BudgetCrossing, Endpoint, WebhookDelivery
from control_plane.ids import new_id

log = logging.getLogger(__name__)
ALERT_ACTION = "budgets.threshold-crossed"


@dataclass
class BudgetJobs:
    sessions: sessionmaker[Session]
    settings: BudgetSettings
    context: MeteringContext
    rate_cards: RateCards
    tier: str
    guard: BudgetGuard = field(default_factory=BudgetGuard)
    _reader: SpendReader | None = None
    passes: int = 0

    async def run_forever(self, clock: Callable[[], datetime]) -> None:
        """Two loops: passes (spend, guard, crossings) and deliveries, so a slow webhook
        receiver never delays the guard's next snapshot."""
        await asyncio.gather(
            self._loop("budgets pass", lambda: self.run_once(clock())),
            self._loop(
                "budget webhooks", lambda: deliver_due(self.sessions, self.settings, clock())
            ),
        )

    async def _loop(self, what: str, step: Callable[[], object]) -> None:
        failing = False
        while True:
            try:
                await asyncio.to_thread(step)
            except Exception:  # logged once per outage, not every second
                if not failing:
                    log.exception(
                        "%s failed; retrying every %s s", what, self.settings.refresh_interval_s
                    )
                failing = True
            else:
                if failing:
                    log.info("%s works again", what)
                failing = False
            await asyncio.sleep(self.settings.refresh_interval_s)

    def run_once(self, now: datetime) -> None:
        """One pass: read every budget's spend, hand it to the guard, record crossings."""
        for crossing in self.refresh(now):
            self._record_crossing(*crossing, now)
        self.passes += 1

    def refresh(self, now: datetime) -> list[tuple[Budget, str, Decimal, datetime]]:
        """Read every budget's spend, hand the blocking thresholds to the guard; return the
        thresholds at or over their limit (crossings, recorded once by `_record_crossing`)."""
        began = time.monotonic()
        reader = self._reader or SpendReader(self.context)
        self._reader = reader
        limits: list[Limit] = []
        spent: dict[str, Decimal] = {}
        over: list[tuple[Budget, str, Decimal, datetime]] = []
        with self.sessions() as session:
            budgets = list(session.scalars(select(Budget).order_by(Budget.id)))
            pricer = Pricer(
                self.rate_cards,
                load_placements(session.connection(), self.context.cloud, self.context.region),
                self.tier,
            )
            by_account: dict[str, list[Budget]] = {}
            for budget in budgets:
                by_account.setdefault(budget.account_id, []).append(budget)
            starts = {
                a.alert_configuration_id: period_start(a.time_period, now)
                for b in budgets
                for a in b.config.alert_configurations
            }
            earliest = min(starts.values(), default=now)
            live = reader.live(session, earliest, now) if budgets else {}
            for account_id, owned in by_account.items():
                lines = reader.stored(session, account_id, earliest) + live.get(account_id, [])
                for budget in owned:
                    for alert in budget.config.alert_configurations:
                        key, start = (
                            alert.alert_configuration_id,
                            starts[alert.alert_configuration_id],
                        )
                        amount = alert_spend(lines, budget.config.filter, alert, start, pricer)
                        spent[key] = amount
                        if alert.blocks:
                            limits.append(
                                Limit(
                                    budget.id,
                                    budget.display_name,
                                    account_id,
                                    budget.config.filter,
                                    alert,
                                    start,
                                )
                            )
                        if amount >= alert.quantity_threshold:
                            over.append((budget, key, amount, start))
            tagged = any(b.config.filter.tags for b in budgets)
            endpoint_tags = (
                tags_of(session.connection(), list(session.scalars(select(Endpoint.id))))
                if tagged
                else {}
            )
        self.guard.apply(Snapshot(tuple(limits), spent, endpoint_tags, began, pricer))
        return over

    def _record_crossing(
        self, budget: Budget, alert_id: str, amount: Decimal, start: datetime, now: datetime
    ) -> None:
        alert = next(
            a for a in budget.config.alert_configurations if a.alert_configuration_id == alert_id
        )
        threshold = str(alert.quantity_threshold)
        with self.sessions() as session:
            if session.get(BudgetCrossing, (alert_id, start, threshold)) is not None:
                return
            event_id = new_id()
            payload = {
                "event_id": event_id,
                "type": "budget.threshold_crossed",
                "account_id": budget.account_id,
                "budget_configuration_id": budget.id,
                "display_name": budget.display_name,
                "alert_configuration_id": alert_id,
                "time_period": alert.time_period.value,
                "quantity_type": alert.quantity_type.value,
                "quantity_threshold": threshold,
                "spend": str(amount),
                "period_start": start.isoformat(),
                "crossed_at": now.isoformat(),
                "blocking": alert.blocks,
            }
            body = json.dumps(payload, sort_keys=True)
            session.add(
                BudgetCrossing(
                    alert_configuration_id=alert_id,
                    period_start=start,
                    threshold=threshold,
                    budget_id=budget.id,
                    spend=str(amount),
                    crossed_at=now,
                )
            )
            for action in alert.webhooks():
                session.add(
                    WebhookDelivery(
                        id=uuid.uuid4().hex,
                        budget_id=budget.id,
                        url=action.target or "",
                        body=body,
                        created_at=now,
                        attempts=0,
                        next_attempt_at=now,
                    )
                )
            session.add(
                AuditRecord(
                    event_id=event_id,
                    event_time=now,
                    account_id=budget.account_id,
                    workspace_id=None,
                    actor=Actor.SYSTEM,
                    user_name="moeserve",
                    principal_id=None,
                    token_id=None,
                    action=ALERT_ACTION,
                    target={
                        "budget_configuration_id": budget.id,
                        "alert_configuration_id": alert_id,
                    },
                    source_ip_address=None,
                    status_code=200,
                    result=AuditResult.SUCCEEDED,
                    error_code=None,
                )
            )
            try:
                session.commit()
            except IntegrityError:  # another control plane recorded it first
                session.rollback()
                return
        log.info("budget %s crossed its threshold %s (%s)", budget.id, threshold, alert_id)
