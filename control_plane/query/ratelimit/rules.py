"""Which AI-gateway rate limits a query must fit in (`rules_for`, pure).

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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from control_plane.auth.caller import Caller
from control_plane.endpoints.ai_gateway import RateLimit, RateLimitKey

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
    limits: Sequence[RateLimit],
    caller: Caller,
    group_names: frozenset[str],
) -> list[LimitRule]:
    """The rules a query of `caller` must fit in (see the module docstring); `group_names`
    are the names of the caller's groups."""
    limits = [lim for lim in limits if lim.calls is not None or lim.tokens is not None]
    shared = [
        _rule(lim, f"{endpoint_id}:endpoint") for lim in limits if lim.key == RateLimitKey.ENDPOINT
    ]
    return shared + _caller_rules(endpoint_id, limits, caller, group_names)


def _caller_rules(
    endpoint_id: str, limits: list[RateLimit], caller: Caller, group_names: frozenset[str]
) -> list[LimitRule]:
    own_bucket = f"{endpoint_id}:principal:{caller.principal_id}"
    named = [lim for lim in limits if lim.key == caller.kind and lim.principal == caller.name]
    if named:
        return [_rule(lim, own_bucket) for lim in named]
    groups = _group_rules(endpoint_id, limits, group_names)
    if groups:
        return groups
    defaults = [lim for lim in limits if lim.key == caller.kind and lim.principal is None]
    if not defaults:
        defaults = [lim for lim in limits if lim.key == RateLimitKey.USER and lim.principal is None]
    return [_rule(lim, own_bucket) for lim in defaults]


def _group_rules(
    endpoint_id: str, limits: list[RateLimit], group_names: frozenset[str]
) -> list[LimitRule]:
    group_limits = [lim for lim in limits if lim.key == RateLimitKey.USER_GROUP]
    generic = [lim for lim in group_limits if lim.principal is None]
    rules: list[LimitRule] = []
    for group in sorted(group_names):
        mine = [lim for lim in group_limits if lim.principal == group] or generic
        rules += [_rule(lim, f"{endpoint_id}:group:{group}", principal=group) for lim in mine]
    return rules


def _rule(limit: RateLimit, bucket: str, principal: str | None = None) -> LimitRule:
    return LimitRule(
        bucket=bucket,
        key=limit.key.value,
        calls=limit.calls,
        tokens=limit.tokens,
        window_s=WINDOW_S[limit.renewal_period],
        principal=principal or limit.principal,
    )
