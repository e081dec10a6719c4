"""Control-plane fixtures: databases (SQLite file and a fresh PostgreSQL database), settings,
a live HTTP server (uvicorn in a thread on a free port) that real clients talk to, and rate
limiters (in-process, or on the real Redis under a key prefix of the test's own)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from bench.scratch_db import postgres_available, scratch_postgres
from control_plane import Settings, create_app
from control_plane.cli import http_config
from control_plane.query.ratelimit.in_process import InProcessRateLimiter
from control_plane.query.ratelimit.redis_counters import RedisRateLimiter
from deploy.providers.base import Provider
from tests.control_plane.fake_provider import InstantProvider
from tests.control_plane.ratelimit_support import REDIS_URL, Factory, redis_or_fail

ADMIN_TOKEN = "dapi-test-admin-token"
# The platform's shared endpoints under default settings (chat, then embeddings).
SHARED = ["databricks-dbrx-tiny", "databricks-dbrx-tiny-embeddings"]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'moeserve.db'}"
        return
    yield from _postgres_database()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from _postgres_database()


def _postgres_database() -> Iterator[str]:
    if not postgres_available():
        pytest.fail("PostgreSQL is not answering on 127.0.0.1:5432 (start it: see docs/testing.md)")
    with scratch_postgres("moeserve_test") as url:
        yield url


def make_settings(database_url: str, tmp_path: Any, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": tmp_path,
        "admin_token": ADMIN_TOKEN,
        "reconcile_interval_s": 0.2,
        "port": 0,
        # The instant engine's knobs (tests/control_plane/fake_provider.py) are environment
        # variables of the served entity: widened here as an operator would.
        "environment": {"allowed": ["APP_*", "MOESERVE_INSTANT_*"]},
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class LiveServer:
    url: str
    app: Any

    @property
    def plane(self) -> Any:
        return self.app.state.plane

    def client(self, token: str = ADMIN_TOKEN) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )


@contextmanager
def live_server(settings: Settings, provider: Provider | None = None) -> Iterator[LiveServer]:
    import uvicorn

    factory: Callable[[Settings], Provider] | None = None
    if provider is not None:
        factory = lambda _settings: provider  # noqa: E731
    app = create_app(settings, factory)
    server = uvicorn.Server(
        http_config(app, settings, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the control plane did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        thread.join(timeout=60)


@pytest.fixture
def instant_server(database_url: str, tmp_path: Any) -> Iterator[LiveServer]:
    """The control plane over the instant provider, on SQLite and on PostgreSQL."""
    settings = make_settings(database_url, tmp_path)
    with live_server(settings, InstantProvider()) as server:
        yield server


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 30,
    what: str | Callable[[], str] = "condition",
) -> Any:
    """`predicate()`'s first truthy value, polled every 0.1 s; `what` (or what it returns at
    the deadline, to show the last state seen) names it in the timeout error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(
        f"timed out after {timeout} s waiting for {what if isinstance(what, str) else what()}"
    )


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test alone; its keys are deleted afterwards (never FLUSHALL)."""
    client = redis_or_fail()
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
