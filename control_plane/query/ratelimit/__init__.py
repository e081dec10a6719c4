"""AI-gateway rate limits of the query path: which budgets a query must fit in (`rules`,
pure), the limiter interface (`limiter`) and its two implementations: counters in this
process (`in_process`, the embedded default) or in Redis, shared by every control-plane
process (`redis_counters`). `build_rate_limiter(redis_url)` picks one."""

from __future__ import annotations

from control_plane.query.ratelimit.limiter import RateLimiter


def build_rate_limiter(redis_url: str | None) -> RateLimiter:
    """Redis-backed counters shared by every process when `redis_url` is set, else in-process."""
    if not redis_url:
        from control_plane.query.ratelimit.in_process import InProcessRateLimiter

        return InProcessRateLimiter()
    from control_plane.query.ratelimit.redis_counters import RedisRateLimiter

    return RedisRateLimiter(redis_url)
