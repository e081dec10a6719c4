"""AI-gateway rate limits: which rules apply to whom (`rules_for`), and both limiters
(in-process and Redis) admitting exactly what the rules allow, alone, concurrently, across
connections and across OS processes. Uses the real Redis at 127.0.0.1:6379, each test under
its own key prefix (removed afterwards)."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import redis

from control_plane.auth.caller import Caller
from control_plane.gateway.ratelimit import (
    LimitRule,
    RateLimited,
    RateLimiter,
    RateLimiterUnavailable,
    build_rate_limiter,
    rules_for,
)
from control_plane.gateway.ratelimit_memory import InProcessRateLimiter
from control_plane.gateway.ratelimit_redis import RedisRateLimiter

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


def buckets(rules: Sequence[LimitRule]) -> list[tuple[str, int | None, int | None]]:
    return [(rule.bucket, rule.calls, rule.tokens) for rule in rules]


# -- which rules apply ----------------------------------------------------------------------
ANA = make_caller("ana@example.com", 7)
BOB = make_caller("bob@example.com", 8)
BOT = make_caller("etl-bot", 9, kind="service_principal")


def test_endpoint_limit_is_one_budget_for_every_caller() -> None:
    limits = [{"calls": 100, "key": "endpoint", "renewal_period": "minute"}]
    for caller in (ANA, BOB, BOT):
        assert buckets(rules_for("e1", limits, caller, frozenset())) == [("e1:endpoint", 100, None)]


def test_user_default_gives_every_caller_its_own_budget_service_principals_included() -> None:
    limits = [{"calls": 10, "key": "user"}]
    assert buckets(rules_for("e1", limits, ANA, frozenset())) == [("e1:principal:7", 10, None)]
    assert buckets(rules_for("e1", limits, BOB, frozenset())) == [("e1:principal:8", 10, None)]
    assert buckets(rules_for("e1", limits, BOT, frozenset())) == [("e1:principal:9", 10, None)]


def test_custom_user_limit_replaces_the_default_for_that_user_only() -> None:
    limits = [{"calls": 10, "key": "user"}, {"calls": 500, "key": "user", "principal": ANA.name}]
    assert buckets(rules_for("e1", limits, ANA, frozenset())) == [("e1:principal:7", 500, None)]
    assert buckets(rules_for("e1", limits, BOB, frozenset())) == [("e1:principal:8", 10, None)]


def test_service_principal_limit_applies_to_that_service_principal_not_a_namesake_user() -> None:
    limits = [{"calls": 3, "key": "service_principal", "principal": "etl-bot"}]
    namesake_user = make_caller("etl-bot", 10, kind="user")
    assert buckets(rules_for("e1", limits, BOT, frozenset())) == [("e1:principal:9", 3, None)]
    assert rules_for("e1", limits, namesake_user, frozenset()) == []


def test_service_principal_default_replaces_the_user_default_for_service_principals() -> None:
    limits = [{"calls": 10, "key": "user"}, {"calls": 2, "key": "service_principal"}]
    assert buckets(rules_for("e1", limits, BOT, frozenset())) == [("e1:principal:9", 2, None)]
    assert buckets(rules_for("e1", limits, ANA, frozenset())) == [("e1:principal:7", 10, None)]


def test_group_members_share_one_budget_that_replaces_the_user_default() -> None:
    limits = [{"calls": 10, "key": "user"}, {"calls": 50, "key": "user_group", "principal": "ml"}]
    ana = rules_for("e1", limits, ANA, frozenset({"ml", "staff"}))
    bob = rules_for("e1", limits, BOB, frozenset({"ml"}))
    assert buckets(ana) == buckets(bob) == [("e1:group:ml", 50, None)]
    assert ana[0].describe() == "50 calls per minute shared by group 'ml'"
    outsider = rules_for("e1", limits, BOT, frozenset({"staff"}))
    assert buckets(outsider) == [("e1:principal:9", 10, None)]


def test_custom_user_limit_takes_priority_over_group_limits() -> None:
    limits = [
        {"calls": 50, "key": "user_group", "principal": "ml"},
        {"calls": 5, "key": "user", "principal": ANA.name},
    ]
    assert buckets(rules_for("e1", limits, ANA, frozenset({"ml"}))) == [("e1:principal:7", 5, None)]


def test_a_caller_in_several_limited_groups_must_fit_every_group() -> None:
    limits = [
        {"calls": 50, "key": "user_group", "principal": "ml"},
        {"tokens": 900, "key": "user_group", "principal": "staff"},
        {"calls": 7, "key": "user_group"},  # every other group: its own budget
    ]
    rules = rules_for("e1", limits, ANA, frozenset({"ml", "staff", "ops"}))
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
    rules = rules_for("e1", limits, ANA, frozenset())
    assert buckets(rules) == [("e1:endpoint", 100, 5000), ("e1:principal:7", 0, None)]
    assert rules[0].describe() == "100 calls and 5000 tokens per minute for the whole endpoint"
    assert rules[1].describe() == "0 calls per minute per user"
    assert all(rule.window_s == 60.0 for rule in rules)


def test_legacy_limits_default_to_the_user_key() -> None:
    rules = rules_for("e1", [{"calls": 4, "renewal_period": "minute"}], ANA, frozenset())
    assert [(rule.key, rule.bucket) for rule in rules] == [("user", "e1:principal:7")]


def test_no_limits_no_rules_and_bad_rules_are_refused() -> None:
    assert rules_for("e1", [], ANA, frozenset({"ml"})) == []
    with pytest.raises(ValueError, match="renewal_period"):
        rules_for("e1", [{"calls": 1, "renewal_period": "hour"}], ANA, frozenset())
    with pytest.raises(ValueError, match="neither"):
        LimitRule(bucket="b", key="user")
    with pytest.raises(ValueError, match="negative"):
        LimitRule(bucket="b", key="user", calls=-1)


# -- limiters -------------------------------------------------------------------------------
def _redis_or_fail() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail("Redis is not answering on 127.0.0.1:6379 (start it: see TESTING.md)")
    return client


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test alone; its keys are deleted afterwards (never FLUSHALL)."""
    client = _redis_or_fail()
    prefix = f"moeserve:rl:test:{uuid.uuid4().hex}:"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture(params=["in_process", "redis"])
def new_limiter(request: pytest.FixtureRequest) -> Factory:
    """Makes limiters that share counters (call it inside the test's event loop)."""
    if request.param == "in_process":
        shared = InProcessRateLimiter()
        return lambda: shared
    prefix = request.getfixturevalue("redis_prefix")
    return lambda: RedisRateLimiter(REDIS_URL, key_prefix=prefix)


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


# -- across OS processes -------------------------------------------------------------------------
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


# -- Redis specifics ---------------------------------------------------------------------------
def test_keys_expire_shortly_after_their_window(redis_prefix: str) -> None:
    rule = LimitRule(bucket="e:endpoint", key="endpoint", calls=3, window_s=1.0)

    async def scenario() -> None:
        limiter = RedisRateLimiter(REDIS_URL, key_prefix=redis_prefix)
        try:
            await limiter.reserve("a", [rule], 5)
        finally:
            await limiter.close()

    asyncio.run(scenario())
    client = _redis_or_fail()
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
