"""The gateway's side of blocking budgets: admit a query only if, for every blocking
threshold whose budget counts it, what the threshold has spent plus what the queries in
flight may still cost plus this query's largest possible cost stays within the threshold.

A threshold's total is the last snapshot of its spend (`refresh`, every
`budgets.refresh_interval_s`, read from the database) + the largest possible cost of every
query admitted and not finished (its prompt, and `max_tokens` × `n` at the endpoint's rates;
without `max_tokens`, the rest of the model's context) + the actual cost of every query that
finished since the snapshot began. A finished query's usage row is committed before it is
settled here, so the next snapshot counts it and its settled entry is dropped then; one
committed while a snapshot was being read may count twice until the next one, which only
blocks early. Within one process the threshold is therefore never overshot by pay-per-token
usage; across processes each sees the others' finished queries one refresh late and not
their queries in flight, so the overshoot is bounded by what the other processes admit in one
refresh interval (docs/operations.md, "Budgets"). Provisioned-throughput capacity accrues by
the hour, not per query: it counts in the spend, and a blocking threshold it pushes over
blocks new queries, but no admission check can stop it accruing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from billing.pricing import token_dbu
from billing.ratecard import UnknownRate
from control_plane.budgets.config import Alert, BudgetFilter, QuantityType
from control_plane.budgets.spend import Pricer, matches
from control_plane.endpoints.config import ServedEntity
from control_plane.ids import utcnow

Cost = Callable[[QuantityType], Decimal]  # a query's cost in a threshold's unit


@dataclass(frozen=True)
class Limit:
    """One blocking threshold of one budget, for its current period."""

    budget_id: str
    display_name: str
    account_id: str
    filter: BudgetFilter
    alert: Alert
    period_start: datetime

    def applies(self, workspace_id: str | None, endpoint: str, tags: dict[str, str]) -> bool:
        return matches(self.filter, workspace_id, endpoint, tags)


class BudgetExceeded(Exception):
    """A blocking threshold refuses the query; the message names the budget."""

    def __init__(self, limit: Limit, spent: Decimal) -> None:
        self.limit = limit
        unit = "DBU" if limit.alert.quantity_type == QuantityType.DBU else "USD"
        period = limit.alert.time_period.value.lower()
        super().__init__(
            f"budget {limit.display_name!r} ({limit.budget_id}) blocks new queries: its "
            f"{period}ly limit of {limit.alert.quantity_threshold} {unit} is reached "
            f"({spent:.6f} {unit} spent or committed). Raise the budget's threshold, or wait "
            "until the period rolls over"
        )


@dataclass
class Hold:
    """What an admitted query reserved: its largest cost per blocking threshold."""

    request_id: str
    charges: dict[str, Decimal]  # alert_configuration_id -> amount
    quantities: dict[str, QuantityType]


@dataclass(frozen=True)
class Snapshot:
    limits: tuple[Limit, ...]
    spent: dict[str, Decimal]  # alert_configuration_id -> spend in the alert's unit
    endpoint_tags: dict[str, dict[str, str]]  # endpoint id -> its tags
    began: float  # time.monotonic() before it was read
    pricer: Pricer | None = None  # where each workspace lives, the rate cards


class BudgetGuard:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot = Snapshot((), {}, {}, float("-inf"))
        self._in_flight: dict[str, Hold] = {}
        self._settled: list[tuple[float, str, Decimal]] = []  # (when, alert id, amount)

    def apply(self, snapshot: Snapshot) -> None:
        """Take a new snapshot: settled queries committed before it began are in it. One
        older than the current (two refreshes raced: a pass and an API change) is dropped:
        it may miss queries whose settled entries the newer one already let go."""
        with self._lock:
            if snapshot.began < self._snapshot.began:
                return
            self._snapshot = snapshot
            self._settled = [s for s in self._settled if s[0] >= snapshot.began]

    def limits_for(
        self, account_id: str, workspace_id: str | None, endpoint_id: str, endpoint: str
    ) -> list[Limit]:
        with self._lock:
            snapshot = self._snapshot
        tags = snapshot.endpoint_tags.get(endpoint_id, {})
        return [
            limit
            for limit in snapshot.limits
            if limit.account_id == account_id and limit.applies(workspace_id, endpoint, tags)
        ]

    def admit(self, request_id: str, limits: list[Limit], cost: Cost) -> Hold | None:
        """Reserve the query's largest cost under each of `limits`, or raise
        `BudgetExceeded` naming the first threshold it would cross (nothing reserved)."""
        if not limits:
            return None
        charges = {
            lim.alert.alert_configuration_id: cost(lim.alert.quantity_type) for lim in limits
        }
        with self._lock:
            for limit in limits:
                key = limit.alert.alert_configuration_id
                used = self._used(key)
                if used >= limit.alert.quantity_threshold or (
                    used + charges[key] > limit.alert.quantity_threshold
                ):
                    raise BudgetExceeded(limit, used)
            hold = Hold(
                request_id,
                charges,
                {lim.alert.alert_configuration_id: lim.alert.quantity_type for lim in limits},
            )
            self._in_flight[request_id] = hold
            return hold

    def query_cost(
        self, entity: ServedEntity, workspace_id: str | None, prompt: int, output: int
    ) -> Cost:
        """What `prompt` + `output` tokens of `entity` cost, in either unit, at today's
        rates where `workspace_id` lives. Provisioned throughput is billed by the hour, and
        a custom model by GPU time: nothing per token."""
        pricer = self._snapshot.pricer
        now = utcnow()

        def cost(quantity: QuantityType) -> Decimal:
            if pricer is None or entity.provisioned:
                return Decimal(0)
            try:
                rates = pricer.rate_cards.at(now).token_rates(entity.model_family)
            except UnknownRate:
                return Decimal(0)
            dbu = token_dbu(prompt, output, rates)
            if quantity == QuantityType.DBU:
                return dbu
            return dbu * pricer.dollars_per_dbu(workspace_id, now)

        return cost

    def release(self, hold: Hold) -> None:
        """The query never ran (refused after admission): drop its reservation."""
        with self._lock:
            self._in_flight.pop(hold.request_id, None)

    def settle(self, hold: Hold, actual: Cost) -> None:
        """The query's usage row is committed: its actual cost replaces its reservation."""
        now = time.monotonic()
        with self._lock:
            self._in_flight.pop(hold.request_id, None)
            for key, quantity in hold.quantities.items():
                self._settled.append((now, key, actual(quantity)))

    def used(self, alert_id: str) -> Decimal:
        with self._lock:
            return self._used(alert_id)

    def _used(self, key: str) -> Decimal:
        total = self._snapshot.spent.get(key, Decimal(0))
        total += sum((h.charges.get(key, Decimal(0)) for h in self._in_flight.values()), Decimal(0))
        return total + sum((amount for _, k, amount in self._settled if k == key), Decimal(0))
