"""Who is querying which endpoint: token -> caller, name -> endpoint, CAN_QUERY, limits.

Resolving a query costs several database reads (token, workspace, groups, endpoint,
permissions). The query path reuses a resolution for `lookup_cache_ttl_s` (default 2 s),
keyed by the token's digest and the endpoint name, so a revoked token, a new ACL or a
promoted config takes effect within that time. Failures (401/403/404) are never cached.
Concurrent misses of one key share one database read (so an expiring entry under load costs
one read, not one per request in flight).

The OpenAI routes name the endpoint inside the body, and a body is read only for a caller
who is known: `caller` authenticates the header alone, cached the same way (a resolution
caches its caller too). A name no endpoint can have is a 404 without a lookup.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from control_plane.auth import Caller, Level, authenticate
from control_plane.db.models import Endpoint, Principal
from control_plane.endpoints.ai_gateway import AiGatewayConfig, RateLimitKey
from control_plane.endpoints.config import EndpointConfig, Task
from control_plane.endpoints.lookup import by_name
from control_plane.endpoints.metrics import EndpointLabels
from control_plane.endpoints.validation import NAME_PATTERN
from control_plane.errors import NotFound
from control_plane.query.ratelimit.rules import LimitRule, rules_for

_MAX_ENTRIES = 10_000
K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class QueryTarget:
    caller: Caller
    endpoint_id: str
    endpoint_name: str
    workspace_id: str | None
    task: Task
    config: EndpointConfig | None  # the live config; None until the first one is ready
    ai_gateway: AiGatewayConfig
    rules: tuple[LimitRule, ...]

    @cached_property
    def labels(self) -> EndpointLabels:
        """The metric labels of this query's series: the endpoint (by id) in the querying
        workspace, the tenant (which, for a shared endpoint, is not the endpoint's). Built
        once per resolution: the query path reads it per chunk."""
        return EndpointLabels(self.caller.workspace_id, self.endpoint_id, self.endpoint_name)

    @property
    def config_version(self) -> int | None:
        return None if self.config is None else self.config.config_version

    @property
    def fallback_enabled(self) -> bool:
        return self.ai_gateway.fallback_enabled

    @property
    def inference_table_enabled(self) -> bool:
        return self.ai_gateway.inference_table_enabled


def _resolve(session: Session, authorization: str | None, name: str) -> QueryTarget:
    caller = authenticate(session, authorization)
    if not NAME_PATTERN.fullmatch(name):  # e.g. a NUL, which PostgreSQL cannot even compare
        shown = name if len(name) <= 64 else f"{name[:64]}…"
        raise NotFound(f"endpoint {shown!r} does not exist")
    endpoint, _ = by_name(session, caller, name, Level.CAN_QUERY)
    return target_of(session, caller, endpoint)


def target_of(session: Session, caller: Caller, endpoint: Endpoint) -> QueryTarget:
    gateway = endpoint.ai_gateway or AiGatewayConfig()
    limits = [*(gateway.rate_limits or []), *(endpoint.rate_limits or [])]
    groups: frozenset[str] = frozenset()
    if caller.group_ids and any(limit.key == RateLimitKey.USER_GROUP for limit in limits):
        groups = frozenset(
            session.scalars(select(Principal.name).where(Principal.id.in_(caller.group_ids)))
        )
    return QueryTarget(
        caller=caller,
        endpoint_id=endpoint.id,
        endpoint_name=endpoint.name,
        workspace_id=endpoint.workspace_id,
        task=endpoint.task,
        config=endpoint.config,
        ai_gateway=gateway,
        rules=tuple(rules_for(endpoint.id, limits, caller, groups)),
    )


def _digest(authorization: str | None) -> str:
    return hashlib.sha256((authorization or "").encode()).hexdigest()


def _key(authorization: str | None, name: str) -> tuple[str, str]:
    return _digest(authorization), name


class QueryTargets:
    """The resolution cache of one control-plane process."""

    def __init__(self, sessions: sessionmaker[Session], ttl_s: float) -> None:
        self._sessions = sessions
        self._ttl_s = ttl_s
        self._cache: dict[tuple[str, str], tuple[float, QueryTarget]] = {}
        self._loading: dict[tuple[str, str], asyncio.Future[QueryTarget]] = {}
        self._callers: dict[str, tuple[float, Caller]] = {}  # by the header's digest
        self._authenticating: dict[str, asyncio.Future[Caller]] = {}
        self._generation = 0  # bumped by forget(): a read begun before must not be cached

    async def resolve(self, authorization: str | None, name: str) -> QueryTarget:
        key = _key(authorization, name)
        hit = self._cache.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return await self.reload(authorization, name)

    async def reload(self, authorization: str | None, name: str) -> QueryTarget:
        """Resolve from the database, bypassing (and then refreshing) the cache; joins a
        read of the same key already in flight. Cancelling one caller does not cancel the
        read for the others."""
        key = _key(authorization, name)
        return await _shared(
            self._loading, key, lambda: self._load_and_cache(key, authorization, name)
        )

    async def caller(self, authorization: str | None) -> Caller:
        """Who sends `authorization` (401 for a missing, unknown, expired or revoked token),
        before anything else of the request is read. Cached like resolutions."""
        digest = _digest(authorization)
        hit = self._callers.get(digest)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return await _shared(
            self._authenticating,
            digest,
            lambda: self._authenticate_and_cache(digest, authorization),
        )

    def forget(self, endpoint_name: str | None = None) -> None:
        """Drop cached resolutions (all, or one endpoint's): this process just changed them."""
        self._generation += 1
        for table in (self._cache, self._loading):
            for key in [k for k in table if endpoint_name is None or k[1] == endpoint_name]:
                del table[key]
        if endpoint_name is None:  # e.g. a token was revoked
            self._callers.clear()
            self._authenticating.clear()

    async def _load_and_cache(
        self, key: tuple[str, str], authorization: str | None, name: str
    ) -> QueryTarget:
        generation, now = self._generation, time.monotonic()
        target = await asyncio.to_thread(self._load, authorization, name)
        if self._ttl_s > 0 and generation == self._generation:
            _put(self._cache, key, (now + self._ttl_s, target))
            _put(self._callers, key[0], (now + self._ttl_s, target.caller))
        return target

    async def _authenticate_and_cache(self, digest: str, authorization: str | None) -> Caller:
        generation, now = self._generation, time.monotonic()
        caller = await asyncio.to_thread(self._authenticate, authorization)
        if self._ttl_s > 0 and generation == self._generation:
            _put(self._callers, digest, (now + self._ttl_s, caller))
        return caller

    def _load(self, authorization: str | None, name: str) -> QueryTarget:
        with self._sessions() as session:
            return _resolve(session, authorization, name)

    def _authenticate(self, authorization: str | None) -> Caller:
        with self._sessions() as session:
            return authenticate(session, authorization)


def _put(table: dict[K, V], key: K, value: V) -> None:
    """A cache entry; a full table starts over (entries are cheap to read again)."""
    if len(table) >= _MAX_ENTRIES:
        table.clear()
    table[key] = value


async def _shared(
    loading: dict[K, asyncio.Future[V]], key: K, load: Callable[[], Coroutine[Any, Any, V]]
) -> V:
    """`load()`'s result, one run shared by every caller of `key` while it is in flight;
    cancelling one caller does not cancel it for the others."""
    future = loading.get(key)
    if future is None:
        future = loading[key] = asyncio.ensure_future(load())
        future.add_done_callback(lambda done: _loaded(loading, key, done))
    return await asyncio.shield(future)


def _loaded(loading: dict[K, asyncio.Future[V]], key: K, done: asyncio.Future[V]) -> None:
    if loading.get(key) is done:
        del loading[key]
    if not done.cancelled():
        done.exception()  # retrieved: a failure nobody awaited any more is not logged
