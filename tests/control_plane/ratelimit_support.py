"""Helpers of the rate-limit tests: callers, the real Redis at 127.0.0.1:6379, and running a
scenario against a limiter in a fresh event loop (fixtures `redis_prefix` and `new_limiter`
live in conftest.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import redis

from control_plane.auth.caller import Caller
from control_plane.query.ratelimit.limiter import RateLimited, RateLimiter
from control_plane.query.ratelimit.rules import LimitRule

REDIS_URL = "redis://127.0.0.1:6379/0"
Factory = Callable[[], RateLimiter]


def make_caller(name: str = "ana@example.com", pid: int = 7, kind: str = "user") -> Caller:
    return Caller(
        principal_id=pid,
        name=name,
        kind=kind,
        workspace_id="ws",
        account_id="acct",
        is_workspace_admin=False,
        is_account_admin=False,
        group_ids=frozenset(),
        token_id="tok",
    )


def redis_or_fail() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail("Redis is not answering on 127.0.0.1:6379 (start it: see docs/testing.md)")
    return client


def run(scenario: Callable[[RateLimiter], Any], new_limiter: Factory) -> Any:
    """Run `scenario(limiter)` in a fresh event loop, closing the limiter afterwards."""

    async def main() -> Any:
        limiter = new_limiter()
        try:
            return await scenario(limiter)
        finally:
            await limiter.close()

    return asyncio.run(main())


async def admitted(
    limiter: RateLimiter, rules: Sequence[LimitRule], n: int, tokens: int = 0
) -> int:
    """How many of `n` queries (one after the other) the limiter admits."""
    count = 0
    for _ in range(n):
        try:
            await limiter.reserve(uuid.uuid4().hex, rules, tokens)
            count += 1
        except RateLimited:
            pass
    return count
