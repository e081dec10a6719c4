"""The limiter that admits a query under all its rules at once (`RateLimiter`), its
admission record (`Reservation`) and its refusals.

Counting (sliding window log): a rule admits a query iff in the last `window_s` seconds
fewer than `calls` queries were admitted, and the tokens counted there plus this query's
prompt tokens stay within `tokens`. So in ANY window of `window_s` seconds at most `calls`
queries are admitted. A query counts from admission with its prompt tokens; `settle`
replaces them by the real input+output count while the query is still in the window. A
prompt larger than a token limit is never admitted (429 with a full window's Retry-After).

`check` asks the same question without recording anything, for a query whose prompt is not
tokenized yet: given a lower bound of its tokens, a refusal then is certain (the exact count
can only be larger), so a caller already over its limits is refused before the expensive
tokenization; admission itself is still decided by `reserve` with the exact count.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from control_plane.query.ratelimit.rules import LimitRule


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

    async def check(self, rules: Sequence[LimitRule], least_prompt_tokens: int) -> None:
        """Raise `RateLimited` when a query of at least `least_prompt_tokens` prompt tokens
        would be refused now, recording nothing. Passing promises nothing: `reserve`, with
        the exact count, still decides."""
        rules = tuple(rules)
        _check_request("check", rules, least_prompt_tokens)
        if rules:
            await self._check(rules, least_prompt_tokens)

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
    async def _check(self, rules: tuple[LimitRule, ...], prompt_tokens: int) -> None: ...

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
