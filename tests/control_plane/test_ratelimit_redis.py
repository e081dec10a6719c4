"""The Redis rate limiter across OS processes (one budget, never exceeded in any sliding
window) and its Redis specifics: key expiry, an unreachable server, configuration."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import socket
import time
from typing import Any

import pytest

from control_plane.query.ratelimit import build_rate_limiter
from control_plane.query.ratelimit.in_process import InProcessRateLimiter
from control_plane.query.ratelimit.limiter import RateLimited, RateLimiter, RateLimiterUnavailable
from control_plane.query.ratelimit.redis_counters import RedisRateLimiter
from control_plane.query.ratelimit.rules import LimitRule
from tests.control_plane.ratelimit_support import (
    REDIS_URL,
    redis_or_fail,
)


async def hammer(limiter: RateLimiter, rule: LimitRule, duration_s: float, tag: str) -> list[float]:
    """Reserve as fast as 4 tasks can for `duration_s`; the admission times (server clock)."""
    times: list[float] = []
    deadline = time.monotonic() + duration_s

    async def worker(w: int) -> None:
        for i in range(10**9):
            if time.monotonic() >= deadline:
                return
            try:
                times.append((await limiter.reserve(f"{tag}-{w}-{i}", [rule], 1)).admitted_at_s)
            except RateLimited:
                await asyncio.sleep(0.002)

    await asyncio.gather(*(worker(w) for w in range(4)))
    return times


def _hammer_process(
    prefix: str, rule: LimitRule, duration_s: float, ready: Any, go: Any, out: Any
) -> None:
    """Child process: connect, wait for the start signal, hammer, send admission times back."""

    async def main() -> list[float]:
        limiter = RedisRateLimiter(REDIS_URL, key_prefix=prefix)
        try:
            warm_up = LimitRule(bucket="warm-up", key="endpoint", calls=1)
            await limiter.reserve("warm-up", [warm_up], 0)
            ready.set()
            go.wait(60)
            return await hammer(limiter, rule, duration_s, "child")
        finally:
            await limiter.close()

    out.put(asyncio.run(main()))


def most_in_any_window(times: list[float], window_s: float) -> int:
    """The most admissions in any half-open interval of `window_s` (exact, in µs)."""
    stamps = sorted(round(t * 1_000_000) for t in times)
    width = round(window_s * 1_000_000)
    most, start = 0, 0
    for end, stamp in enumerate(stamps):
        while stamp - stamps[start] >= width:
            start += 1
        most = max(most, end - start + 1)
    return most


@pytest.mark.slow
def test_two_processes_admit_at_most_the_limit_in_any_sliding_window(redis_prefix: str) -> None:
    rule = LimitRule(bucket="e:endpoint", key="endpoint", calls=15, window_s=1.0)
    duration_s = 3.0
    context = multiprocessing.get_context("spawn")
    ready, go, out = context.Event(), context.Event(), context.Queue()
    child = context.Process(
        target=_hammer_process, args=(redis_prefix, rule, duration_s, ready, go, out)
    )
    child.start()
    try:
        assert ready.wait(120), "the child process started"

        async def parent() -> list[float]:
            limiter = RedisRateLimiter(REDIS_URL, key_prefix=redis_prefix)
            try:
                go.set()
                return await hammer(limiter, rule, duration_s, "parent")
            finally:
                await limiter.close()

        mine = asyncio.run(parent())
        theirs: list[float] = out.get(timeout=60)
    finally:
        child.join(timeout=60)
    assert child.exitcode == 0
    assert mine and theirs, "both processes got admissions"
    assert most_in_any_window(mine + theirs, rule.window_s) == rule.calls
    # ~3 windows of hammering: the limiter neither over- nor under-admits by much.
    assert 2 * rule.calls < len(mine + theirs) <= math.ceil(duration_s + 1) * rule.calls


def test_keys_expire_shortly_after_their_window(redis_prefix: str) -> None:
    rule = LimitRule(bucket="e:endpoint", key="endpoint", calls=3, window_s=1.0)

    async def scenario() -> None:
        limiter = RedisRateLimiter(REDIS_URL, key_prefix=redis_prefix)
        try:
            await limiter.reserve("a", [rule], 5)
        finally:
            await limiter.close()

    asyncio.run(scenario())
    client = redis_or_fail()
    keys = sorted(client.scan_iter(match=f"{redis_prefix}*"))
    assert [k.decode().removeprefix(redis_prefix) for k in keys] == [
        "e:endpoint:log",
        "e:endpoint:total",
        "e:endpoint:weights",
    ]
    assert all(0 < client.pttl(key) <= 2000 for key in keys)
    client.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_redis_is_a_clear_error_naming_the_url_without_its_password() -> None:
    url = f"redis://:s3cret@127.0.0.1:{_free_port()}/0"
    rule = LimitRule(bucket="e:endpoint", key="endpoint", calls=3)

    async def scenario() -> None:
        limiter = build_rate_limiter(url)
        try:
            with pytest.raises(RateLimiterUnavailable) as unavailable:
                await limiter.reserve("a", [rule], 0)
        finally:
            await limiter.close()
        assert "redis://:***@127.0.0.1:" in str(unavailable.value)
        assert "s3cret" not in str(unavailable.value)

    started = time.monotonic()
    asyncio.run(scenario())
    assert time.monotonic() - started < 5


def test_factory_picks_redis_only_when_configured() -> None:
    assert isinstance(build_rate_limiter(None), InProcessRateLimiter)
    assert isinstance(build_rate_limiter(""), InProcessRateLimiter)
    limiter = build_rate_limiter(REDIS_URL)
    assert isinstance(limiter, RedisRateLimiter)
    asyncio.run(limiter.close())
