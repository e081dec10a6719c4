"""AI-gateway rate limits: which rules apply to whom (`rules_for`) — endpoint, user,
service-principal and group limits, their priorities and the legacy form."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from control_plane.auth.caller import Caller
from control_plane.endpoints.ai_gateway import RateLimit
from control_plane.query.ratelimit.rules import LimitRule, rules_for
from tests.control_plane.ratelimit_support import (
    make_caller,
)


def rules_of(
    endpoint_id: str, limits: Sequence[dict[str, Any]], caller: Caller, groups: frozenset[str]
) -> list[LimitRule]:
    """`rules_for` over limits as the API receives them (validated into `RateLimit`s)."""
    return rules_for(endpoint_id, [RateLimit.model_validate(lim) for lim in limits], caller, groups)


def buckets(rules: Sequence[LimitRule]) -> list[tuple[str, int | None, int | None]]:
    return [(rule.bucket, rule.calls, rule.tokens) for rule in rules]


ANA = make_caller("ana@example.com", 7)
BOB = make_caller("bob@example.com", 8)
BOT = make_caller("etl-bot", 9, kind="service_principal")


def test_endpoint_limit_is_one_budget_for_every_caller() -> None:
    limits = [{"calls": 100, "key": "endpoint", "renewal_period": "minute"}]
    for caller in (ANA, BOB, BOT):
        assert buckets(rules_of("e1", limits, caller, frozenset())) == [("e1:endpoint", 100, None)]


def test_user_default_gives_every_caller_its_own_budget_service_principals_included() -> None:
    limits = [{"calls": 10, "key": "user"}]
    assert buckets(rules_of("e1", limits, ANA, frozenset())) == [("e1:principal:7", 10, None)]
    assert buckets(rules_of("e1", limits, BOB, frozenset())) == [("e1:principal:8", 10, None)]
    assert buckets(rules_of("e1", limits, BOT, frozenset())) == [("e1:principal:9", 10, None)]


def test_custom_user_limit_replaces_the_default_for_that_user_only() -> None:
    limits = [{"calls": 10, "key": "user"}, {"calls": 500, "key": "user", "principal": ANA.name}]
    assert buckets(rules_of("e1", limits, ANA, frozenset())) == [("e1:principal:7", 500, None)]
    assert buckets(rules_of("e1", limits, BOB, frozenset())) == [("e1:principal:8", 10, None)]


def test_service_principal_limit_applies_to_that_service_principal_not_a_namesake_user() -> None:
    limits = [{"calls": 3, "key": "service_principal", "principal": "etl-bot"}]
    namesake_user = make_caller("etl-bot", 10, kind="user")
    assert buckets(rules_of("e1", limits, BOT, frozenset())) == [("e1:principal:9", 3, None)]
    assert rules_of("e1", limits, namesake_user, frozenset()) == []


def test_service_principal_default_replaces_the_user_default_for_service_principals() -> None:
    limits = [{"calls": 10, "key": "user"}, {"calls": 2, "key": "service_principal"}]
    assert buckets(rules_of("e1", limits, BOT, frozenset())) == [("e1:principal:9", 2, None)]
    assert buckets(rules_of("e1", limits, ANA, frozenset())) == [("e1:principal:7", 10, None)]


def test_group_members_share_one_budget_that_replaces_the_user_default() -> None:
    limits = [{"calls": 10, "key": "user"}, {"calls": 50, "key": "user_group", "principal": "ml"}]
    ana = rules_of("e1", limits, ANA, frozenset({"ml", "staff"}))
    bob = rules_of("e1", limits, BOB, frozenset({"ml"}))
    assert buckets(ana) == buckets(bob) == [("e1:group:ml", 50, None)]
    assert ana[0].describe() == "50 calls per minute shared by group 'ml'"
    outsider = rules_of("e1", limits, BOT, frozenset({"staff"}))
    assert buckets(outsider) == [("e1:principal:9", 10, None)]


def test_custom_user_limit_takes_priority_over_group_limits() -> None:
    limits = [
        {"calls": 50, "key": "user_group", "principal": "ml"},
        {"calls": 5, "key": "user", "principal": ANA.name},
    ]
    assert buckets(rules_of("e1", limits, ANA, frozenset({"ml"}))) == [("e1:principal:7", 5, None)]


def test_a_caller_in_several_limited_groups_must_fit_every_group() -> None:
    limits = [
        {"calls": 50, "key": "user_group", "principal": "ml"},
        {"tokens": 900, "key": "user_group", "principal": "staff"},
        {"calls": 7, "key": "user_group"},  # every other group: its own budget
    ]
    rules = rules_of("e1", limits, ANA, frozenset({"ml", "staff", "ops"}))
    assert buckets(rules) == [
        ("e1:group:ml", 50, None),
        ("e1:group:ops", 7, None),
        ("e1:group:staff", None, 900),
    ]


def test_endpoint_and_caller_limits_combine_and_empty_limits_are_ignored() -> None:
    limits: list[dict[str, Any]] = [
        {"calls": 100, "tokens": 5000, "key": "endpoint"},
        {"key": "user"},  # limits nothing
        {"calls": 0, "key": "user"},
    ]
    rules = rules_of("e1", limits, ANA, frozenset())
    assert buckets(rules) == [("e1:endpoint", 100, 5000), ("e1:principal:7", 0, None)]
    assert rules[0].describe() == "100 calls and 5000 tokens per minute for the whole endpoint"
    assert rules[1].describe() == "0 calls per minute per user"
    assert all(rule.window_s == 60.0 for rule in rules)


def test_legacy_limits_default_to_the_user_key() -> None:
    rules = rules_of("e1", [{"calls": 4, "renewal_period": "minute"}], ANA, frozenset())
    assert [(rule.key, rule.bucket) for rule in rules] == [("user", "e1:principal:7")]


def test_no_limits_no_rules_and_bad_rules_are_refused() -> None:
    assert rules_of("e1", [], ANA, frozenset({"ml"})) == []
    with pytest.raises(ValueError, match="renewal_period"):
        rules_of("e1", [{"calls": 1, "renewal_period": "hour"}], ANA, frozenset())
    with pytest.raises(ValueError, match="neither"):
        LimitRule(bucket="b", key="user")
    with pytest.raises(ValueError, match="negative"):
        LimitRule(bucket="b", key="user", calls=-1)
