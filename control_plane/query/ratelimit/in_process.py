"""`InProcessRateLimiter`: the AI-gateway limiter of a single control-plane process (the
embedded default), with the semantics described in `control_plane.query.ratelimit.limiter`.
Safe across asyncio tasks of one event loop (each reserve is check-then-record with no
await in between), not across threads."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from control_plane.query.ratelimit.limiter import (
    RateLimited,
    RateLimiter,
    Reservation,
    retry_after_s,
)
from control_plane.query.ratelimit.rules import LimitRule

_SWEEP_EVERY_S = 60.0  # how often idle buckets are dropped


@dataclass
class _Bucket:
    """One bucket's sliding window log: admitted queries, oldest first, with token weights."""

    window_s: float
    log: deque[str] = field(default_factory=deque)
    entries: dict[str, tuple[float, int]] = field(default_factory=dict)  # id -> (at, tokens)
    total_tokens: int = 0

    def trim(self, now: float) -> None:
        while self.log and self.entries[self.log[0]][0] <= now - self.window_s:
            self.total_tokens -= self.entries.pop(self.log.popleft())[1]

    def wait_s(self, rule: LimitRule, prompt_tokens: int, now: float) -> float | None:
        """Seconds until `rule` has room for this query; None: room now."""
        waits: list[float] = []
        if rule.calls is not None and len(self.log) >= rule.calls:
            waits.append(self._calls_wait(rule.calls, now))
        if rule.tokens is not None and not self._fits_tokens(rule.tokens, prompt_tokens):
            waits.append(self._tokens_wait(rule.tokens, prompt_tokens, now))
        return max(waits, default=None)

    def _fits_tokens(self, tokens: int, prompt_tokens: int) -> bool:
        return tokens > 0 and self.total_tokens + prompt_tokens <= tokens

    def _calls_wait(self, calls: int, now: float) -> float:
        if calls == 0:
            return self.window_s
        # Once this entry leaves the window, fewer than `calls` remain.
        return self.entries[self.log[len(self.log) - calls]][0] + self.window_s - now

    def _tokens_wait(self, tokens: int, prompt_tokens: int, now: float) -> float:
        if tokens == 0 or prompt_tokens > tokens:
            return self.window_s  # never fits: retry after a full window
        used = self.total_tokens
        for request_id in self.log:
            admitted_at, weight = self.entries[request_id]
            used -= weight
            if used + prompt_tokens <= tokens:
                return admitted_at + self.window_s - now
        return self.window_s

    def record(self, request_id: str, tokens: int, now: float) -> None:
        if request_id not in self.entries:
            self.log.append(request_id)
            self.entries[request_id] = (now, 0)
        self.set_tokens(request_id, tokens)

    def set_tokens(self, request_id: str, tokens: int) -> None:
        if request_id in self.entries:
            admitted_at, old = self.entries[request_id]
            self.entries[request_id] = (admitted_at, tokens)
            self.total_tokens += tokens - old


class InProcessRateLimiter(RateLimiter):
    """Counters in this process (one control-plane process, or tests). Each call runs
    without awaiting, so concurrent asyncio tasks cannot interleave; not thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._next_sweep_at = clock() + _SWEEP_EVERY_S

    async def _reserve(
        self, request_id: str, rules: tuple[LimitRule, ...], prompt_tokens: int
    ) -> Reservation:
        now = self._clock()
        if now >= self._next_sweep_at:
            self._sweep(now)
        buckets = {rule.bucket: self._trimmed(rule, now) for rule in rules}
        first = buckets[rules[0].bucket].entries.get(request_id)
        if first is not None:  # reserved before: the first admission stands
            return Reservation(request_id, rules, prompt_tokens, admitted_at_s=first[0])
        _raise_if_full(rules, buckets, prompt_tokens, now)
        for bucket in buckets.values():
            bucket.record(request_id, prompt_tokens, now)
        return Reservation(request_id, rules, prompt_tokens, admitted_at_s=now)

    async def _check(self, rules: tuple[LimitRule, ...], prompt_tokens: int) -> None:
        now = self._clock()
        buckets = {rule.bucket: self._trimmed(rule, now) for rule in rules}
        _raise_if_full(rules, buckets, prompt_tokens, now)

    async def _settle(self, reservation: Reservation, total_tokens: int) -> None:
        for name in reservation.buckets:
            bucket = self._buckets.get(name)
            if bucket is not None:
                bucket.set_tokens(reservation.request_id, total_tokens)

    async def close(self) -> None:
        self._buckets.clear()

    def _trimmed(self, rule: LimitRule, now: float) -> _Bucket:
        bucket = self._buckets.setdefault(rule.bucket, _Bucket(rule.window_s))
        bucket.trim(now)
        return bucket

    def _sweep(self, now: float) -> None:
        """Drop buckets nobody used for a whole window, so memory follows active callers."""
        self._next_sweep_at = now + _SWEEP_EVERY_S
        for name, bucket in list(self._buckets.items()):
            bucket.trim(now)
            if not bucket.log:
                del self._buckets[name]


def _raise_if_full(
    rules: tuple[LimitRule, ...], buckets: dict[str, _Bucket], prompt_tokens: int, now: float
) -> None:
    """Raise for the rule that blocks longest: retrying any earlier cannot succeed."""
    blocked: list[tuple[float, LimitRule]] = []
    for rule in rules:
        wait = buckets[rule.bucket].wait_s(rule, prompt_tokens, now)
        if wait is not None:
            blocked.append((wait, rule))
    if blocked:
        wait, rule = max(blocked, key=lambda pair: pair[0])
        raise RateLimited(retry_after_s(wait), rule)
