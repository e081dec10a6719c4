"""`RedisOutage`: whether the shared rate-limit counters (Redis) answer, as this process last
saw it, and what a rate-limit decision does while they do not (`ratelimit.redis_unavailable`).

- fail_closed (the default): the decision is refused (`RateLimiterUnavailable`; the gateway
  answers 503 with Retry-After). No query escapes its limits; rate-limited endpoints are
  down while Redis is.
- fail_open: the decision is taken on counters of this process alone (an
  `InProcessRateLimiter` kept for the outage). Every limit still holds per process, so one
  process admits exactly what it would with Redis, and N processes admit up to N times a
  limit: rate limits guard capacity and cost, and a flood during an outage is still bounded.
  Admitting without counting would drop every limit at once. Queries the fallback admitted
  are not in Redis when it comes back (and Redis may have lost its own counts): for at most
  one window the budgets start afresh.

Either way the outage is logged once (a WARNING when Redis goes, an INFO when it is back;
the URL without its password), the `moeserve_ratelimit_redis_unavailable_total{mode}` counter
counts the decisions taken without Redis, and `moeserve_ratelimit_redis_reachable` is 0
meanwhile. While Redis is down, one call every `recheck_s` tries it again (the connection
pool reconnects by itself); the others go straight to the policy, so an unreachable host
costs no query a connect timeout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from control_plane.query.ratelimit.in_process import InProcessRateLimiter
from control_plane.query.ratelimit.limiter import RateLimiter, RateLimiterUnavailable
from control_plane.settings import RedisUnavailable

log = logging.getLogger(__name__)


class RedisOutageMetrics:
    """The outage's Prometheus series, in `registry` (the app's; a private one if None)."""

    def __init__(self, mode: RedisUnavailable, registry: CollectorRegistry | None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.decisions = Counter(
            "moeserve_ratelimit_redis_unavailable",
            "rate-limit decisions taken while Redis was unreachable: refused with 503 "
            "(mode fail_closed) or taken on this process's own counters (mode fail_open)",
            ["mode"],
            registry=registry,
        ).labels(mode.value)  # exported at 0 from the start: alerts need the series
        self.reachable = Gauge(
            "moeserve_ratelimit_redis_reachable",
            "1 while the last call to the rate limits' Redis succeeded (or none was made), "
            "0 while it is unreachable",
            registry=registry,
        )
        self.reachable.set(1)


class RedisOutage:
    """Reachability of the Redis at `where` (already without its password) and the
    `mode` decisions follow while it is unreachable. Used from one event loop."""

    def __init__(
        self,
        where: str,
        mode: RedisUnavailable,
        *,
        recheck_s: float,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.where = where
        self.mode = mode
        self._recheck_s = recheck_s
        self._clock = clock
        self._metrics = RedisOutageMetrics(mode, registry)
        # Unix time stamps its admissions, as Redis's TIME does (`RateLimiter.wall_clock`).
        self.fallback = (
            InProcessRateLimiter(clock=time.time) if mode is RedisUnavailable.FAIL_OPEN else None
        )
        self._down_since: float | None = None
        self._recheck_at = 0.0
        self._last_error = ""
        self._decisions_while_down = 0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def skip_redis(self) -> bool:
        """True while Redis is down and no recheck is due: decide without trying it. When
        one is due, this call claims it (the calls meanwhile keep skipping)."""
        if self._down_since is None:
            return False
        now = self._clock()
        if now < self._recheck_at:
            return True
        self._recheck_at = now + self._recheck_s
        return False

    def unavailable(self) -> RateLimiterUnavailable:
        """The error of a call that skipped Redis: the last failure's."""
        return RateLimiterUnavailable(f"Redis at {self.where} is unavailable: {self._last_error}")

    def reached(self) -> None:
        """A call got an answer from Redis: the outage, if any, is over."""
        if self._down_since is None:
            return
        log.info(
            "rate limits: Redis at %s is reachable again after %.1f s; %d decisions were "
            "taken without it (%s); limits are shared through it again",
            self.where,
            self._clock() - self._down_since,
            self._decisions_while_down,
            self.mode.value,
        )
        self._down_since = None
        self._metrics.reachable.set(1)

    def failed(self, error: Exception) -> None:
        """A call could not reach Redis (after the client's own retries)."""
        self._last_error = str(error) or type(error).__name__
        if self._down_since is not None:
            return
        now = self._clock()
        self._down_since = now
        self._recheck_at = now + self._recheck_s
        self._decisions_while_down = 0
        self._metrics.reachable.set(0)
        if self.mode is RedisUnavailable.FAIL_OPEN:
            consequence = "queries are admitted under this process's own counters"
        else:
            consequence = "queries to rate-limited endpoints get 503"
        log.warning(
            "rate limits: Redis at %s is unreachable (%s: %s); %s (%s) until it is back; "
            "trying it again every %g s",
            self.where,
            type(error).__name__,
            self._last_error,
            consequence,
            self.mode.value,
            self._recheck_s,
        )

    def stand_in(self, error: RateLimiterUnavailable) -> RateLimiter:
        """The limiter that takes a decision Redis could not take: the fallback counters
        (fail_open), or none: `error` is raised (fail_closed)."""
        self._metrics.decisions.inc()
        self._decisions_while_down += 1
        if self.fallback is None:
            raise error
        return self.fallback

    async def close(self) -> None:
        if self.fallback is not None:
            await self.fallback.close()
