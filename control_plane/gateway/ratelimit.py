"""AI-gateway rate limits of the query path: which budgets a query must fit in (`rules_for`,
pure) and the limiter that admits it under all of them at once (`RateLimiter`).

Which limits apply to a caller (Databricks AI Gateway semantics):
- `endpoint` limits always apply: one budget shared by every caller of the endpoint.
- Of the caller's own limits only the most specific tier applies:
  1. custom limits naming the caller: `key="user"` with the caller's name (users), or
     `key="service_principal"` with the caller's name (service principals);
  2. otherwise `user_group` limits of the caller's groups: each group has one budget that
     all its members share (a `user_group` limit without `principal` gives each group its
     own budget; a limit naming a group replaces it for that group). A caller in several
     limited groups must fit in every one of them (Databricks lets the most generous
     group admit; we are stricter to keep admission one all-or-nothing check);
  3. otherwise the defaults: `key="service_principal"` without principal (service
     principals only), else `key="user"` without principal (every caller, service
     principals included: the user default bounds each identity that holds a token).
  Tier 1 and 3 budgets are per caller: bucket `{endpoint_id}:principal:{principal_id}`.
- A limit with both `calls` and `tokens` admits only what fits both; `0` blocks everything.

Counting (sliding window log): a rule admits a query iff in the last `window_s` seconds
fewer than `calls` queries were admitted, and the tokens counted there plus this query's
prompt tokens stay within `tokens`. So in ANY window of `window_s` seconds at most `calls`
queries are admitted. A query counts from admission with its prompt tokens; `settle`
replaces them by the real input+output count while the query is still in the window. A
prompt larger than a token limit is never admitted (429 with a full window's Retry-After).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from control_plane.auth.caller import Caller

WINDOW_S = {"minute": 60.0}  # renewal_period -> window length


@dataclass(frozen=True)
class LimitRule:
    """One budget: at most `calls` queries and/or `tokens` tokens in any `window_s` seconds,
    counted in `bucket`. Rules with the same bucket count the same queries (and must share
    `window_s`). `key` is the limit's kind (metrics label), `principal` whom it names."""

    bucket: str
    key: str
    calls: int | None = None
    tokens: int | None = None
    window_s: float = 60.0
    principal: str | None = None

    def __post_init__(self) -> None:
        if self.calls is None and self.tokens is None:
            raise ValueError(f"rate limit {self.bucket!r} limits neither calls nor tokens")
        if min(self.calls or 0, self.tokens or 0) < 0 or not self.window_s > 0:
            raise ValueError(f"rate limit {self.bucket!r} has a negative limit or window")

    def describe(self) -> str:
        """E.g. '10 calls and 1000 tokens per minute per user'."""
        limits = ((self.calls, "calls"), (self.tokens, "tokens"))
        amounts = [f"{n} {unit}" for n, unit in limits if n is not None]
        period = "minute" if self.window_s == 60 else f"{self.window_s:g} s"
        return f"{' and '.join(amounts)} per {period} {self._scope()}"

    def _scope(self) -> str:
        if self.key == "endpoint":
            return "for the whole endpoint"
        kind = self.key.replace("_", " ")
        if self.key == "user_group":
            return f"shared by group {self.principal!r}"
        return f"for {kind} {self.principal!r}" if self.principal else f"per {kind}"


def rules_for(
    endpoint_id: str,
    limits: Sequence[Mapping[str, Any]],
    caller: Caller,
    group_names: frozenset[str],
) -> list[LimitRule]:
    """The rules a query of `caller` must fit in (see the module docstring). `limits` are
    stored `RateLimit` dicts; `group_names` the names of the caller's groups."""
    limits = [
        lim for lim in limits if lim.get("calls") is not None or lim.get("tokens") is not None
    ]
    shared = [_rule(lim, f"{endpoint_id}:endpoint") for lim in limits if _key(lim) == "endpoint"]
    return shared + _caller_rules(endpoint_id, limits, caller, group_names)


def _caller_rules(
    endpoint_id: str, limits: list[Mapping[str, Any]], caller: Caller, group_names: frozenset[str]
) -> list[LimitRule]:
    own_bucket = f"{endpoint_id}:principal:{caller.principal_id}"
    named = [
        lim for lim in limits if _key(lim) == caller.kind and lim.get("principal") == caller.name
    ]
    if named:
        return [_rule(lim, own_bucket) for lim in named]
    groups = _group_rules(endpoint_id, limits, group_names)
    if groups:
        return groups
    defaults = [lim for lim in limits if _key(lim) == caller.kind and lim.get("principal") is None]
    if not defaults:
        defaults = [lim for lim in limits if _key(lim) == "user" and lim.get("principal") is None]
    return [_rule(lim, own_bucket) for lim in defaults]


def _group_rules(
    endpoint_id: str, limits: list[Mapping[str, Any]], group_names: frozenset[str]
) -> list[LimitRule]:
    group_limits = [lim for lim in limits if _key(lim) == "user_group"]
    generic = [lim for lim in group_limits if lim.get("principal") is None]
    rules: list[LimitRule] = []
    for group in sorted(group_names):
        mine = [lim for lim in group_limits if lim.get("principal") == group] or generic
        rules += [_rule(lim, f"{endpoint_id}:group:{group}", principal=group) for lim in mine]
    return rules


def _key(limit: Mapping[str, Any]) -> str:
    return str(limit.get("key") or "user")  # RateLimit's default key


def _rule(limit: Mapping[str, Any], bucket: str, principal: str | None = None) -> LimitRule:
    period = limit.get("renewal_period") or "minute"
    if period not in WINDOW_S:
        raise ValueError(f"unknown rate-limit renewal_period {period!r}")
    return LimitRule(
        bucket=bucket,
        key=_key(limit),
        calls=limit.get("calls"),
        tokens=limit.get("tokens"),
        window_s=WINDOW_S[period],
        principal=principal or limit.get("principal"),
    )


class RateLimited(Exception):
    """The query does not fit in `rule`; it may fit in `retry_after_s` seconds (>= 1)."""

    def __init__(self, retry_after_s: int, rule: LimitRule) -> None:
        super().__init__(f"rate limit exceeded ({rule.describe()}); retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s
        self.rule = rule


class RateLimiterUnavailable(Exception):
    """The shared counters cannot be reached (the gateway answers 503)."""


@dataclass(frozen=True)
class Reservation:
    """An admitted query's place in its buckets; `settle` fixes its token count."""

    request_id: str
    rules: tuple[LimitRule, ...]
    prompt_tokens: int
    admitted_at_s: float  # the limiter's clock: Redis server time, or time.monotonic()

    @property
    def buckets(self) -> tuple[str, ...]:
        """Each bucket once, in rule order."""
        return tuple(dict.fromkeys(rule.bucket for rule in self.rules))


def retry_after_s(wait_s: float) -> int:
    """Whole seconds a client waits before a retry can succeed (at least 1)."""
    return max(1, math.ceil(wait_s))


class RateLimiter(ABC):
    """Admits a query under all its rules atomically (`reserve`), then settles its tokens.

    `request_id` must be unique per query; reserving it again returns the first admission
    (so a retried reserve never counts twice). Admitted calls always count, whatever
    happens to the query later."""

    # True when `Reservation.admitted_at_s` is Unix time (a shared clock such as Redis's),
    # so it can stamp the query's usage row with the exact instant of admission.
    wall_clock: ClassVar[bool] = False

    async def reserve(
        self, request_id: str, rules: Sequence[LimitRule], prompt_tokens: int
    ) -> Reservation:
        """Record the query in every rule's bucket, or raise `RateLimited` recording nothing."""
        rules = tuple(rules)
        _check_request(request_id, rules, prompt_tokens)
        if not rules:
            return Reservation(request_id, rules, prompt_tokens, admitted_at_s=0.0)
        return await self._reserve(request_id, rules, prompt_tokens)

    async def settle(self, reservation: Reservation, total_tokens: int) -> None:
        """Count `total_tokens` (input + output) for the query instead of its prompt tokens,
        in every bucket it is still in. Idempotent."""
        if total_tokens < 0:
            raise ValueError(f"total_tokens must be >= 0, got {total_tokens}")
        if reservation.rules:
            await self._settle(reservation, total_tokens)

    async def release(self, reservation: Reservation) -> None:
        """The query was never sent to a model: its call still counts, its tokens do not."""
        await self.settle(reservation, 0)

    @abstractmethod
    async def close(self) -> None:
        """Free connections; the limiter is unusable afterwards."""

    @abstractmethod
    async def _reserve(
        self, request_id: str, rules: tuple[LimitRule, ...], prompt_tokens: int
    ) -> Reservation: ...

    @abstractmethod
    async def _settle(self, reservation: Reservation, total_tokens: int) -> None: ...


def _check_request(request_id: str, rules: tuple[LimitRule, ...], prompt_tokens: int) -> None:
    if not request_id:
        raise ValueError("request_id must not be empty")
    if prompt_tokens < 0:
        raise ValueError(f"prompt_tokens must be >= 0, got {prompt_tokens}")
    windows: dict[str, float] = {}
    for rule in rules:
        if windows.setdefault(rule.bucket, rule.window_s) != rule.window_s:
            raise ValueError(f"rules of bucket {rule.bucket!r} disagree on window_s")


def build_rate_limiter(redis_url: str | None) -> RateLimiter:
    """Redis-backed counters shared by every process when `redis_url` is set, else in-process."""
    if not redis_url:
        from control_plane.gateway.ratelimit_memory import InProcessRateLimiter

        return InProcessRateLimiter()
    from control_plane.gateway.ratelimit_redis import RedisRateLimiter

    return RedisRateLimiter(redis_url)
