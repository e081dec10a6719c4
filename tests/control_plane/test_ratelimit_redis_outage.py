"""Issue 14's fault suite: the Redis that holds the shared rate-limit counters goes away and
comes back. The fault is real: a private `redis-server` child process (its own free port, a
password, no persistence) is killed with SIGKILL by its PID and started again on the same
port, empty, as a restarted Redis without persistence is. The shared Redis at 6379 is never
touched.

`ratelimit.redis_unavailable` decides what a rate-limited query gets meanwhile: fail_closed
(the default) a 503 with Retry-After in the Databricks error shape; fail_open an admission
under the process's own counters, so a limit still holds. Either way the outage is logged
once (WARNING, then INFO when Redis is back; never the password), counted in
`moeserve_ratelimit_redis_unavailable_total{mode}`, and once Redis answers again the limits
are counted in it again. The limiter's own tests run in a fresh event loop; the gateway's
against instant-engine Ray Serve replicas."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from control_plane.query.ratelimit import build_rate_limiter
from control_plane.query.ratelimit.limiter import RateLimited, RateLimiter, RateLimiterUnavailable
from control_plane.query.ratelimit.redis_counters import KEY_PREFIX, RedisRateLimiter
from control_plane.query.ratelimit.rules import LimitRule
from control_plane.settings import RateLimitSettings, RedisUnavailable
from tests.control_plane.query_fixtures import create_endpoint, instant_ray_server

PASSWORD = "s3cret-redis-password"
OUTAGE_LOGGER = "control_plane.query.ratelimit.outage"
RECHECK_S = 0.2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server child process of this test alone, killed and restarted at will."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = _free_port()
        self.url = f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"
        self._dir = tmp_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--requirepass", PASSWORD, "--save", "", "--appendonly", "no"]
        self._process = subprocess.Popen(
            [*command, "--dir", str(self._dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with self.client() as client:
                    client.ping()
                return
            except redis.ConnectionError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, by PID: the server vanishes mid-connection, as a crashed one does."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_connect_timeout=1)

    def admitted_calls(self, bucket: str) -> int:
        """How many queries bucket `bucket` holds in this Redis."""
        with self.client() as client:
            return int(client.zcard(f"{KEY_PREFIX}{bucket}:log"))


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _outage_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == OUTAGE_LOGGER]


def _assert_logged_once_each(caplog: pytest.LogCaptureFixture, *, back: bool) -> None:
    """One WARNING naming the URL without its password (and, once Redis is back, one INFO);
    no line anywhere carries the password."""
    records = _outage_records(caplog)
    warnings = [r for r in records if r.levelno == logging.WARNING]
    infos = [r for r in records if r.levelno == logging.INFO]
    assert len(warnings) == 1, [r.getMessage() for r in records]
    assert "redis://:***@127.0.0.1:" in warnings[0].getMessage()
    assert "unreachable" in warnings[0].getMessage()
    assert len(infos) == (1 if back else 0), [r.getMessage() for r in records]
    if back:
        assert "reachable again" in infos[0].getMessage()
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)


# -- the limiter ------------------------------------------------------------------------------
def _limiter(url: str, mode: RedisUnavailable, registry: CollectorRegistry) -> RateLimiter:
    limits = RateLimitSettings(redis_unavailable=mode, redis_recheck_s=RECHECK_S)
    limiter = build_rate_limiter(url, limits, registry)
    assert isinstance(limiter, RedisRateLimiter)
    return limiter


async def _outcomes(limiter: RateLimiter, rule: LimitRule, n: int) -> list[str]:
    """'admitted', 'limited' (429) or 'unavailable' (503) for `n` queries, one by one."""
    outcomes = []
    for _ in range(n):
        try:
            await limiter.reserve(uuid.uuid4().hex, [rule], 1)
            outcomes.append("admitted")
        except RateLimited:
            outcomes.append("limited")
        except RateLimiterUnavailable as exc:
            assert PASSWORD not in str(exc)
            outcomes.append("unavailable")
    return outcomes


@pytest.mark.parametrize(
    ("mode", "during_outage"),
    [
        # fail_closed: every decision is refused while Redis is down.
        (RedisUnavailable.FAIL_CLOSED, ["unavailable"] * 5),
        # fail_open: this process's own counters, empty at the outage, admit the limit of 3
        # and refuse the rest: a limit still holds.
        (RedisUnavailable.FAIL_OPEN, ["admitted"] * 3 + ["limited"] * 2),
    ],
)
def test_the_limiter_follows_the_setting_while_redis_is_down_and_counts_in_it_again_after(
    private_redis: PrivateRedis,
    caplog: pytest.LogCaptureFixture,
    mode: RedisUnavailable,
    during_outage: list[str],
) -> None:
    caplog.set_level(logging.INFO, logger=OUTAGE_LOGGER)
    registry = CollectorRegistry()
    rule = LimitRule(bucket="e:endpoint", key="endpoint", calls=3)
    labels = {"mode": mode.value}

    def unavailable_total() -> float | None:
        return registry.get_sample_value("moeserve_ratelimit_redis_unavailable_total", labels)

    async def scenario() -> None:
        limiter = _limiter(private_redis.url, mode, registry)
        try:
            assert await _outcomes(limiter, rule, 2) == ["admitted"] * 2
            assert unavailable_total() == 0
            assert not _outage_records(caplog)

            private_redis.kill()
            assert await _outcomes(limiter, rule, 5) == during_outage
            assert unavailable_total() == 5  # one per decision taken without Redis
            assert registry.get_sample_value("moeserve_ratelimit_redis_reachable") == 0
            _assert_logged_once_each(caplog, back=False)

            private_redis.start()  # empty: no persistence
            await asyncio.sleep(RECHECK_S)  # the next decision tries Redis again
            # Counted in Redis again: the restarted one holds every admission since (a
            # fail_open fallback, full by now, would refuse the first).
            assert await _outcomes(limiter, rule, 4) == ["admitted"] * 3 + ["limited"]
            assert private_redis.admitted_calls("e:endpoint") == 3
            assert unavailable_total() == 5
            assert registry.get_sample_value("moeserve_ratelimit_redis_reachable") == 1
            _assert_logged_once_each(caplog, back=True)
        finally:
            await limiter.close()

    asyncio.run(scenario())


def test_settling_during_an_outage_neither_raises_nor_logs_per_query(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """Queries admitted before Redis went settle their tokens after it: nothing is left to
    refuse, so the settle is dropped quietly (the usage row must not be lost to it)."""
    caplog.set_level(logging.INFO)
    rule = LimitRule(bucket="e:endpoint", key="endpoint", tokens=1000)

    async def scenario() -> None:
        limiter = _limiter(private_redis.url, RedisUnavailable.FAIL_CLOSED, CollectorRegistry())
        try:
            reservations = [await limiter.reserve(f"q{i}", [rule], 10) for i in range(5)]
            private_redis.kill()
            for reservation in reservations:
                await limiter.settle(reservation, 50)
        finally:
            await limiter.close()

    asyncio.run(scenario())
    _assert_logged_once_each(caplog, back=False)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_the_setting_is_typed_and_fail_closed_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from control_plane.settings import Settings

    assert Settings().ratelimit.redis_unavailable is RedisUnavailable.FAIL_CLOSED
    monkeypatch.setenv("MOESERVE_RATELIMIT__REDIS_UNAVAILABLE", "fail_open")
    assert Settings().ratelimit.redis_unavailable is RedisUnavailable.FAIL_OPEN
    monkeypatch.setenv("MOESERVE_RATELIMIT__REDIS_UNAVAILABLE", "open-ish")
    with pytest.raises(ValidationError, match="fail_closed"):
        Settings()


# -- through the gateway ----------------------------------------------------------------------
def _query(http: httpx.Client, endpoint: str) -> httpx.Response:
    return http.post(
        f"/serving-endpoints/{endpoint}/invocations",
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    )


def _statuses(http: httpx.Client, endpoint: str, n: int) -> list[int]:
    return [_query(http, endpoint).status_code for _ in range(n)]


def _metric(http: httpx.Client, name: str, labels: dict[str, str]) -> float | None:
    text = http.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


@pytest.mark.parametrize(
    ("mode", "during_outage"),
    [
        (RedisUnavailable.FAIL_CLOSED, [503] * 4),
        (RedisUnavailable.FAIL_OPEN, [200] * 3 + [429]),
    ],
)
def test_through_the_gateway_a_redis_outage_follows_the_setting(
    ray_cluster: None,
    tmp_path: Path,
    private_redis: PrivateRedis,
    caplog: pytest.LogCaptureFixture,
    mode: RedisUnavailable,
    during_outage: list[int],
) -> None:
    caplog.set_level(logging.INFO, logger=OUTAGE_LOGGER)
    endpoint = f"outage-{mode.value.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
    settings: dict[str, Any] = {
        "redis_url": private_redis.url,
        "ratelimit": {"redis_unavailable": mode.value, "redis_recheck_s": RECHECK_S},
    }
    labels = {"mode": mode.value}
    with instant_ray_server(tmp_path, **settings) as live, live.client() as http:
        endpoint_id = create_endpoint(http, endpoint)["id"]
        limit = {"calls": 3, "key": "endpoint", "renewal_period": "minute"}
        put = http.put(
            f"/api/2.0/serving-endpoints/{endpoint}/ai-gateway", json={"rate_limits": [limit]}
        )
        assert put.status_code == 200, put.text
        live.plane.gateway.targets.forget(endpoint)
        total = "moeserve_ratelimit_redis_unavailable_total"
        assert _query(http, endpoint).status_code == 200
        assert _metric(http, total, labels) == 0

        private_redis.kill()
        responses = [_query(http, endpoint) for _ in during_outage]
        assert [r.status_code for r in responses] == during_outage, responses[-1].text
        if mode is RedisUnavailable.FAIL_CLOSED:
            for response in responses:
                assert response.headers["Retry-After"] == "1"
                assert response.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
                assert "rate limits cannot be checked" in response.json()["message"]
                assert PASSWORD not in response.text
                assert "Redis" not in response.text and "127.0.0.1" not in response.text
        assert _metric(http, total, labels) == len(during_outage)
        assert _metric(http, "moeserve_ratelimit_redis_reachable", {}) == 0
        _assert_logged_once_each(caplog, back=False)

        private_redis.start()
        time.sleep(RECHECK_S)
        # The restarted Redis is empty: its window admits 3 again, and enforces them.
        assert _statuses(http, endpoint, 4) == [200, 200, 200, 429]
        assert private_redis.admitted_calls(f"{endpoint_id}:endpoint") == 3
        assert _metric(http, total, labels) == len(during_outage)
        _assert_logged_once_each(caplog, back=True)
