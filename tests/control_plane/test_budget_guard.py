"""The budget guard's arithmetic, without a server: what a threshold counts (the snapshot,
queries in flight at their largest cost, finished ones at their actual cost until a snapshot
includes them), and that a stale snapshot never replaces a newer one."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from control_plane.budgets.config import (
    Action,
    ActionType,
    Alert,
    BudgetFilter,
    QuantityType,
    TimePeriod,
    TriggerType,
)
from control_plane.budgets.guard import BudgetExceeded, BudgetGuard, Cost, Limit, Snapshot

ALERT = Alert(
    alert_configuration_id="a1",
    time_period=TimePeriod.MONTH,
    trigger_type=TriggerType.CUMULATIVE_SPENDING_EXCEEDED,
    quantity_type=QuantityType.DBU,
    quantity_threshold=Decimal(10),
    action_configurations=[Action(action_configuration_id="x", action_type=ActionType.BLOCK_USAGE)],
)
LIMIT = Limit("b1", "team", "acct", BudgetFilter(), ALERT, datetime(2026, 12, 1, tzinfo=UTC))


def _cost(amount: int) -> Cost:
    return lambda _unit: Decimal(amount)


def _snapshot(spent: int, began: float) -> Snapshot:
    return Snapshot((LIMIT,), {"a1": Decimal(spent)}, {}, began)


def test_in_flight_queries_count_at_their_largest_cost_then_at_their_actual_one() -> None:
    guard = BudgetGuard()
    guard.apply(_snapshot(0, time.monotonic()))
    first = guard.admit("r1", [LIMIT], _cost(4))
    guard.admit("r2", [LIMIT], _cost(4))
    with pytest.raises(BudgetExceeded, match="'team' \\(b1\\) blocks new queries"):
        guard.admit("r3", [LIMIT], _cost(4))  # 4 + 4 + 4 > 10
    assert first is not None
    guard.settle(first, _cost(1))  # r1 generated less than its max_tokens
    assert guard.used("a1") == 5
    guard.admit("r4", [LIMIT], _cost(4))  # 1 + 4 + 4 = 9
    # A snapshot read after r1's row was committed counts it: its settled entry goes.
    guard.apply(_snapshot(1, time.monotonic()))
    assert guard.used("a1") == 9
    # A slower, older read applied late is ignored (it may miss r1).
    guard.apply(_snapshot(0, 0.0))
    assert guard.used("a1") == 9


def test_a_threshold_reached_refuses_even_a_free_query_and_a_release_frees_its_room() -> None:
    guard = BudgetGuard()
    guard.apply(_snapshot(10, time.monotonic()))
    with pytest.raises(BudgetExceeded):
        guard.admit("free", [LIMIT], _cost(0))
    guard.apply(_snapshot(3, time.monotonic()))
    hold = guard.admit("r1", [LIMIT], _cost(7))
    assert hold is not None and guard.used("a1") == 10
    guard.release(hold)  # refused by a rate limit after the budget admitted it
    assert guard.used("a1") == 3
    assert guard.admit("none", [], _cost(100)) is None  # no budget counts it
