"""AI-gateway rate limits: both limiters (in-process and Redis) admit exactly what the rules
allow — calls and tokens, sliding windows, settlement, alone and concurrently. Uses the real
Redis at 127.0.0.1:6379, each test under its own key prefix (removed afterwards)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence

import pytest

from control_plane.query.ratelimit.in_process import InProcessRateLimiter
from control_plane.query.ratelimit.limiter import RateLimited, RateLimiter
from control_plane.query.ratelimit.redis_counters import RedisRateLimiter
from control_plane.query.ratelimit.rules import LimitRule
from tests.control_plane.ratelimit_support import (
    REDIS_URL,
    Factory,
    admitted,
    run,
)


def test_calls_limit_admits_exactly_n_then_429_with_retry_after(new_limiter: Factory) -> None:
    rule = LimitRule(bucket="e:endpoint", key="endpoint", calls=5)

    async def scenario(limiter: RateLimiter) -> None:
        assert await admitted(limiter, [rule], 5) == 5
        with pytest.raises(RateLimited) as rejected:
            await limiter.reserve("sixth", [rule], 0)
        assert rejected.value.rule == rule
        assert 59 <= rejected.value.retry_after_s <= 60

    run(scenario, new_limiter)


def test_zero_limits_block_everything_they_apply_to(new_limiter: Factory) -> None:
    no_calls = LimitRule(bucket="e:a", key="user", calls=0, window_s=1.0)
    no_tokens = LimitRule(bucket="e:b", key="user", tokens=0, window_s=1.0)

    async def scenario(limiter: RateLimiter) -> None:
        for rule in (no_calls, no_tokens):
            with pytest.raises(RateLimited) as rejected:
                await limiter.reserve("q", [rule], 0)
            assert rejected.value.retry_after_s == 1

    run(scenario, new_limiter)


def test_window_slides_instead_of_resetting(new_limiter: Factory) -> None:
    roomy = LimitRule(bucket="e:endpoint", key="endpoint", calls=100, window_s=1.0)
    tight = LimitRule(bucket="e:principal:1", key="user", calls=2, window_s=1.0)
    rules = [roomy, tight]  # the tight rule's bucket is not the first one

    async def scenario(limiter: RateLimiter) -> None:
        await limiter.reserve("a", rules, 0)
        a_admitted_by = time.monotonic()
        await asyncio.sleep(0.5)
        await limiter.reserve("b", rules, 0)
        with pytest.raises(RateLimited) as rejected:
            await limiter.reserve("c", rules, 0)
        assert (rejected.value.rule, rejected.value.retry_after_s) == (tight, 1)
        # "a" has left the window, "b" has not: room for exactly one more.
        await asyncio.sleep(a_admitted_by + 1.05 - time.monotonic())
        assert await admitted(limiter, rules, 3) == 1

    run(scenario, new_limiter)


def test_in_process_window_is_half_open_and_idle_buckets_are_dropped() -> None:
    now = [100.0]
    limiter = InProcessRateLimiter(clock=lambda: now[0])
    rule = LimitRule(bucket="e:endpoint", key="endpoint", calls=1, window_s=10.0)

    async def scenario() -> None:
        await limiter.reserve("a", [rule], 0)
        now[0] = 109.999
        with pytest.raises(RateLimited) as rejected:
            await limiter.reserve("b", [rule], 0)
        assert rejected.value.retry_after_s == 1
        now[0] = 110.0  # "a" counted during [100, 110)
        await limiter.reserve("c", [rule], 0)
        for i in range(2000):  # many one-off callers, then a quiet window
            await limiter.reserve(f"x{i}", [LimitRule(bucket=f"b{i}", key="user", calls=1)], 0)
        now[0] += 61
        await limiter.reserve("d", [rule], 0)
        assert list(limiter._buckets) == ["e:endpoint"]  # memory follows active callers

    asyncio.run(scenario())


def test_a_rejection_records_nothing_in_any_bucket(new_limiter: Factory) -> None:
    tight = LimitRule(bucket="e:principal:1", key="user", calls=1)
    roomy = LimitRule(bucket="e:endpoint", key="endpoint", calls=3)

    async def scenario(limiter: RateLimiter) -> None:
        await limiter.reserve("only", [tight], 0)
        for i in range(4):
            with pytest.raises(RateLimited) as rejected:
                await limiter.reserve(f"blocked-{i}", [roomy, tight], 0)
            assert rejected.value.rule == tight
        assert await admitted(limiter, [roomy], 5) == 3

    run(scenario, new_limiter)


def test_token_rule_admits_while_used_plus_prompt_fits(new_limiter: Factory) -> None:
    rule = LimitRule(bucket="e:endpoint", key="endpoint", tokens=100)

    async def scenario(limiter: RateLimiter) -> None:
        await limiter.reserve("a", [rule], 60)
        with pytest.raises(RateLimited) as rejected:
            await limiter.reserve("b", [rule], 41)
        assert 59 <= rejected.value.retry_after_s <= 60
        await limiter.reserve("c", [rule], 40)  # 60 + 40 == 100 still fits
        with pytest.raises(RateLimited):
            await limiter.reserve("d", [rule], 1)

    run(scenario, new_limiter)


def test_token_retry_after_waits_until_enough_old_tokens_leave_the_window(
    new_limiter: Factory,
) -> None:
    rule = LimitRule(bucket="e:endpoint", key="endpoint", tokens=100, window_s=2.0)

    async def scenario(limiter: RateLimiter) -> None:
        assert await admitted(limiter, [rule], 64, tokens=1) == 64
        await asyncio.sleep(1.0)
        assert await admitted(limiter, [rule], 36, tokens=1) == 36
        waits = {}
        for prompt in (64, 70):  # frees the older 64 entries / also 6 of the newer ones
            with pytest.raises(RateLimited) as rejected:
                await limiter.reserve(f"prompt-{prompt}", [rule], prompt)
            waits[prompt] = rejected.value.retry_after_s
        assert waits == {64: 1, 70: 2}

    run(scenario, new_limiter)


def test_prompt_larger_than_the_token_limit_is_never_admitted(new_limiter: Factory) -> None:
    rule = LimitRule(bucket="e:endpoint", key="endpoint", tokens=100, window_s=2.0)

    async def scenario(limiter: RateLimiter) -> None:
        with pytest.raises(RateLimited) as rejected:
            await limiter.reserve("huge", [rule], 101)
        assert rejected.value.retry_after_s == 2

    run(scenario, new_limiter)


def test_settle_replaces_prompt_tokens_by_the_real_count_once(new_limiter: Factory) -> None:
    rule = LimitRule(bucket="e:principal:1", key="user", tokens=100)

    async def scenario(limiter: RateLimiter) -> None:
        first = await limiter.reserve("a", [rule], 60)
        await limiter.settle(first, 10)
        await limiter.settle(first, 10)  # idempotent
        await limiter.reserve("b", [rule], 90)  # 10 + 90 == 100
        with pytest.raises(RateLimited):
            await limiter.reserve("c", [rule], 1)
        await limiter.settle(first, 0)
        await limiter.reserve("d", [rule], 10)

    run(scenario, new_limiter)


def test_settle_can_push_a_bucket_over_its_token_limit(new_limiter: Factory) -> None:
    rule = LimitRule(bucket="e:principal:1", key="user", tokens=100)

    async def scenario(limiter: RateLimiter) -> None:
        first = await limiter.reserve("a", [rule], 10)
        await limiter.settle(first, 500)  # the answer was long
        with pytest.raises(RateLimited):
            await limiter.reserve("b", [rule], 0)

    run(scenario, new_limiter)


def test_release_keeps_the_call_but_frees_the_tokens(new_limiter: Factory) -> None:
    calls = LimitRule(bucket="e:principal:1", key="user", calls=1)
    tokens = LimitRule(bucket="e:endpoint", key="endpoint", tokens=100)

    async def scenario(limiter: RateLimiter) -> None:
        reservation = await limiter.reserve("a", [calls, tokens], 100)
        await limiter.release(reservation)
        await limiter.reserve("b", [tokens], 100)
        with pytest.raises(RateLimited) as rejected:
            await limiter.reserve("c", [calls], 0)
        assert rejected.value.rule == calls

    run(scenario, new_limiter)


def test_reserving_the_same_request_again_counts_it_once(new_limiter: Factory) -> None:
    rule = LimitRule(bucket="e:endpoint", key="endpoint", calls=2, tokens=100)

    async def scenario(limiter: RateLimiter) -> None:
        first = await limiter.reserve("a", [rule], 50)
        again = await limiter.reserve("a", [rule], 50)
        assert again.admitted_at_s == first.admitted_at_s
        await limiter.reserve("b", [rule], 50)
        with pytest.raises(RateLimited):
            await limiter.reserve("c", [rule], 0)

    run(scenario, new_limiter)


def test_no_rules_admit_without_counting(new_limiter: Factory) -> None:
    async def scenario(limiter: RateLimiter) -> None:
        reservation = await limiter.reserve("a", [], 10)
        assert reservation.rules == ()
        await limiter.settle(reservation, 20)

    run(scenario, new_limiter)


def test_invalid_requests_are_refused(new_limiter: Factory) -> None:
    rule = LimitRule(bucket="e:endpoint", key="endpoint", calls=2)
    other_window = LimitRule(bucket="e:endpoint", key="endpoint", tokens=2, window_s=1.0)

    async def scenario(limiter: RateLimiter) -> None:
        with pytest.raises(ValueError, match="prompt_tokens"):
            await limiter.reserve("a", [rule], -1)
        with pytest.raises(ValueError, match="request_id"):
            await limiter.reserve("", [rule], 0)
        with pytest.raises(ValueError, match="window_s"):
            await limiter.reserve("a", [rule, other_window], 0)
        reservation = await limiter.reserve("a", [rule], 0)
        with pytest.raises(ValueError, match="total_tokens"):
            await limiter.settle(reservation, -1)

    run(scenario, new_limiter)


async def storm(limiters: Sequence[RateLimiter], rules: Sequence[LimitRule], per: int) -> int:
    """`per` concurrent reserves on each limiter at once; how many were admitted."""

    async def one(limiter: RateLimiter) -> bool:
        try:
            await limiter.reserve(uuid.uuid4().hex, rules, 1)
        except RateLimited:
            return False
        return True

    results = await asyncio.gather(*(one(lim) for lim in limiters for _ in range(per)))
    return sum(results)


def test_concurrent_tasks_never_exceed_the_limit(new_limiter: Factory) -> None:
    rules = [
        LimitRule(bucket="e:endpoint", key="endpoint", calls=25),
        LimitRule(bucket="e:principal:1", key="user", tokens=1000),
    ]

    async def scenario(limiter: RateLimiter) -> None:
        assert await storm([limiter], rules, 200) == 25

    run(scenario, new_limiter)


def test_two_redis_clients_share_one_budget(redis_prefix: str) -> None:
    rule = LimitRule(bucket="e:endpoint", key="endpoint", calls=40)

    async def scenario() -> None:
        limiters = [RedisRateLimiter(REDIS_URL, key_prefix=redis_prefix) for _ in range(2)]
        try:
            assert await storm(limiters, [rule], 100) == 40
        finally:
            await asyncio.gather(*(lim.close() for lim in limiters))

    asyncio.run(scenario())
