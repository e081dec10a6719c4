"""AI-gateway rate limits of the query path: which budgets a query must fit in (`rules`,
pure), the limiter interface (`limiter`) and its two implementations: counters in this
process (`in_process`, the embedded default) or in Redis, shared by every control-plane
process (`redis_counters`), with what happens while Redis is unreachable (`outage`:
`ratelimit.redis_unavailable`, fail_closed or fail_open). `build_rate_limiter` picks one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from control_plane.query.ratelimit.limiter import RateLimiter

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from control_plane.settings import RateLimitSettings


def build_rate_limiter(
    redis_url: str | None,
    limits: RateLimitSettings | None = None,
    registry: CollectorRegistry | None = None,
) -> RateLimiter:
    """Redis-backed counters shared by every process when `redis_url` is set (`limits`: what
    happens while Redis is unreachable; its metrics go to `registry`), else in-process."""
    if not redis_url:
        from control_plane.query.ratelimit.in_process import InProcessRateLimiter

        return InProcessRateLimiter()
    from control_plane.query.ratelimit.redis_counters import RedisRateLimiter
    from control_plane.settings import RateLimitSettings

    limits = limits or RateLimitSettings()
    return RedisRateLimiter(
        redis_url,
        when_unavailable=limits.redis_unavailable,
        recheck_s=limits.redis_recheck_s,
        registry=registry,
    )
