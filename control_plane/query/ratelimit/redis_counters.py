"""Rate-limit counters in Redis, shared by every control-plane process.

Each bucket is three keys under `moeserve:rl:<bucket>:`: `log` (sorted set, member =
request id, score = admission time in µs), `weights` (hash, request id -> tokens) and
`total` (the sum of `weights`). One Lua script checks every rule and records the query in
every bucket, or records nothing: Redis runs scripts one at a time, so admission is atomic
across processes, and it reads the clock with `TIME` on the server, so processes whose
clocks differ still agree on every window. Keys expire a second after their window, so idle
callers leave nothing behind. Needs Redis >= 5 (scripts replicate by effects) and, because
one script touches several buckets, a single Redis node rather than a cluster.

When Redis cannot be reached, `outage.RedisOutage` decides instead (`ratelimit.
redis_unavailable`: refuse, or count in this process), logs the outage once and counts it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CollectorRegistry
from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript

from control_plane.query.ratelimit.limiter import (
    RateLimited,
    RateLimiter,
    RateLimiterUnavailable,
    Reservation,
    retry_after_s,
)
from control_plane.query.ratelimit.outage import RedisOutage
from control_plane.query.ratelimit.rules import LimitRule
from control_plane.settings import RedisUnavailable

KEY_PREFIX = "moeserve:rl:"
_BUCKET_KEYS = ("log", "weights", "total")
_UNAVAILABLE = (redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.ReadOnlyError)

# Shared by both scripts: KEYS holds three keys per bucket (log, weights, total).
_SET_TOKENS_LUA = """
local function fmt(n) return string.format('%.0f', n) end  -- exact, unlike tostring
local function set_tokens(b, request_id, tokens)
  local weights, total = KEYS[3 * b - 1], KEYS[3 * b]
  local old = tonumber(redis.call('HGET', weights, request_id) or 0)
  redis.call('HSET', weights, request_id, fmt(tokens))
  redis.call('INCRBY', total, fmt(tokens - old))
end
"""

# ARGV: request id ('' to check only: the same verdict, nothing recorded), prompt tokens,
# each bucket's window (µs), then per rule: its bucket's index, calls limit, tokens limit
# (-1: no limit). Returns {1, admitted at (µs)} or {0, index of the rule that blocks
# longest, µs until it has room}.
_RESERVE_LUA = (
    _SET_TOKENS_LUA
    + """
local request_id, prompt = ARGV[1], tonumber(ARGV[2])
local checking = request_id == ''
local nbuckets = #KEYS / 3
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local function window(b) return tonumber(ARGV[2 + b]) end

local function trim(b)
  local log, weights, total = KEYS[3 * b - 2], KEYS[3 * b - 1], KEYS[3 * b]
  local cutoff = fmt(now - window(b))
  local expired = redis.call('ZRANGEBYSCORE', log, '-inf', cutoff)
  if #expired == 0 then return end
  local freed = 0
  for _, member in ipairs(expired) do
    freed = freed + (tonumber(redis.call('HGET', weights, member)) or 0)
    redis.call('HDEL', weights, member)
  end
  redis.call('ZREMRANGEBYSCORE', log, '-inf', cutoff)
  redis.call('DECRBY', total, fmt(freed))
end

local function calls_wait(b, limit)
  local log = KEYS[3 * b - 2]
  local used = redis.call('ZCARD', log)
  if used < limit then return nil end
  if limit == 0 then return window(b) end
  -- once this entry leaves the window, fewer than `limit` remain
  local entry = redis.call('ZRANGE', log, used - limit, used - limit, 'WITHSCORES')
  return tonumber(entry[2]) + window(b) - now
end

local function tokens_wait(b, limit)
  local used = tonumber(redis.call('GET', KEYS[3 * b]) or 0)
  if limit > 0 and used + prompt <= limit then return nil end
  if limit == 0 or prompt > limit then return window(b) end  -- never fits
  -- walk the log oldest first, a page at a time: usually the first few entries suffice
  local log, weights, start = KEYS[3 * b - 2], KEYS[3 * b - 1], 0
  while true do
    local entries = redis.call('ZRANGE', log, start, start + 63, 'WITHSCORES')
    if #entries == 0 then return window(b) end
    for i = 1, #entries, 2 do
      used = used - (tonumber(redis.call('HGET', weights, entries[i])) or 0)
      if used + prompt <= limit then return tonumber(entries[i + 1]) + window(b) - now end
    end
    start = start + 64
  end
end

for b = 1, nbuckets do trim(b) end
if not checking then
  local first = redis.call('ZSCORE', KEYS[1], request_id)
  if first then return {1, first} end  -- reserved before: the first admission stands
end

local blocking, longest = 0, -1
for r = 1, (#ARGV - 2 - nbuckets) / 3 do
  local at = 2 + nbuckets + 3 * (r - 1)
  local b, calls, tokens = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  local wait = calls >= 0 and calls_wait(b, calls) or nil
  local token_wait = tokens >= 0 and tokens_wait(b, tokens) or nil
  if token_wait and (wait == nil or token_wait > wait) then wait = token_wait end
  if wait and wait > longest then blocking, longest = r, wait end
end
if blocking > 0 then return {0, blocking, fmt(longest)} end
if checking then return {1, fmt(now)} end

for b = 1, nbuckets do
  redis.call('ZADD', KEYS[3 * b - 2], 'NX', fmt(now), request_id)
  set_tokens(b, request_id, prompt)
  local ttl_ms = fmt(window(b) / 1000 + 1000)
  for k = 3 * b - 2, 3 * b do redis.call('PEXPIRE', KEYS[k], ttl_ms) end
end
return {1, fmt(now)}
"""
)

# ARGV: request id, total tokens. Only buckets whose window still holds the query change.
_SETTLE_LUA = (
    _SET_TOKENS_LUA
    + """
for b = 1, #KEYS / 3 do
  if redis.call('ZSCORE', KEYS[3 * b - 2], ARGV[1]) then
    set_tokens(b, ARGV[1], tonumber(ARGV[2]))
  end
end
return 1
"""
)


class RedisRateLimiter(RateLimiter):
    """Counters in Redis at `url` (`redis://[:password@]host:port/db`).

    Nothing connects until the first query. At most `max_connections` connections; a query
    that finds them all busy waits up to `timeout_s` for one (a server under load queues
    instead of failing). Redis counts as unreachable after `timeout_s` per try (two quick
    retries: both scripts are idempotent per request id, so a retried call never counts a
    query twice); then `when_unavailable` decides (see `outage`): `RateLimiterUnavailable`
    (fail_closed) or this process's own counters (fail_open). Outage metrics go to
    `registry`."""

    wall_clock = True  # admissions are stamped with Redis `TIME` (the fallback's: Unix time)

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = KEY_PREFIX,
        timeout_s: float = 1.0,
        max_connections: int = 50,
        when_unavailable: RedisUnavailable = RedisUnavailable.FAIL_CLOSED,
        recheck_s: float = 1.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.where = redacted(url)
        self._prefix = key_prefix
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2),
        )
        self._redis = Redis(connection_pool=pool)
        self._reserve_script = self._redis.register_script(_RESERVE_LUA)
        self._settle_script = self._redis.register_script(_SETTLE_LUA)
        self.outage = RedisOutage(
            self.where, when_unavailable, recheck_s=recheck_s, registry=registry
        )

    async def _reserve(
        self, request_id: str, rules: tuple[LimitRule, ...], prompt_tokens: int
    ) -> Reservation:
        buckets, args = _reserve_args(request_id, rules, prompt_tokens)
        try:
            reply = await self._run(self._reserve_script, buckets, args)
        except RateLimiterUnavailable as exc:
            return await self.outage.stand_in(exc).reserve(request_id, rules, prompt_tokens)
        if int(reply[0]) == 0:
            raise _refusal(reply, rules)
        return Reservation(request_id, rules, prompt_tokens, float(reply[1]) / 1_000_000)

    async def _check(self, rules: tuple[LimitRule, ...], prompt_tokens: int) -> None:
        buckets, args = _reserve_args("", rules, prompt_tokens)  # '': check, record nothing
        try:
            reply = await self._run(self._reserve_script, buckets, args)
        except RateLimiterUnavailable as exc:
            await self.outage.stand_in(exc).check(rules, prompt_tokens)
            return
        if int(reply[0]) == 0:
            raise _refusal(reply, rules)

    async def _settle(self, reservation: Reservation, total_tokens: int) -> None:
        if self.outage.fallback is not None:  # it may have admitted this query
            await self.outage.fallback.settle(reservation, total_tokens)
        args = [reservation.request_id, total_tokens]
        # Unreachable: the query is over, nothing is left to refuse. The outage is logged
        # (once) and its decisions counted; the query's tokens stay as admitted.
        with suppress(RateLimiterUnavailable):
            await self._run(self._settle_script, reservation.buckets, args)

    async def close(self) -> None:
        await self.outage.close()
        await self._redis.aclose(close_connection_pool=True)

    async def _run(self, script: AsyncScript, buckets: Sequence[str], args: list[Any]) -> Any:
        if self.outage.skip_redis():
            raise self.outage.unavailable()
        keys = [f"{self._prefix}{bucket}:{part}" for bucket in buckets for part in _BUCKET_KEYS]
        try:
            reply = await script(keys=keys, args=args)
        except _UNAVAILABLE as exc:
            self.outage.failed(exc)
            raise RateLimiterUnavailable(f"Redis at {self.where} is unavailable: {exc}") from exc
        self.outage.reached()
        return reply


def _reserve_args(
    request_id: str, rules: tuple[LimitRule, ...], prompt_tokens: int
) -> tuple[list[str], list[str | int]]:
    """The reserve script's buckets and ARGV."""
    buckets = list(dict.fromkeys(rule.bucket for rule in rules))
    windows = {rule.bucket: round(rule.window_s * 1_000_000) for rule in rules}
    args: list[str | int] = [request_id, prompt_tokens, *(windows[b] for b in buckets)]
    for rule in rules:
        args += [buckets.index(rule.bucket) + 1, _limit(rule.calls), _limit(rule.tokens)]
    return buckets, args


def _refusal(reply: Any, rules: tuple[LimitRule, ...]) -> RateLimited:
    return RateLimited(retry_after_s(int(reply[2]) / 1_000_000), rules[int(reply[1]) - 1])


def _limit(value: int | None) -> int:
    return -1 if value is None else value


def redacted(url: str) -> str:
    """`url` without its password, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
