"""Sending a query to a served entity's replicas: bounded queues, timeouts, fallback.

- Backpressure: one process keeps at most `max_replicas x max_ongoing_requests +
  max_queued_requests` queries in flight per served entity; past that a query gets 503
  with `Retry-After` at once instead of joining an unbounded queue.
- Timeouts: a non-streaming call is bounded by `query_timeout_s`; a stream must yield its
  first chunk within `first_token_timeout_s` (`scale_from_zero_timeout_s` when the entity
  may be parked: the call itself wakes it) and finish within `query_timeout_s`. A timed-out
  call is cancelled on the replica, so a stuck replica never holds other requests.
- Fallback: a failure before the first token (replica died, app gone, engine draining,
  timeout) is retried once on the next candidate entity; client errors (the engine's
  `ValueError`s) are not retried.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from control_plane.endpoints.config import ServedEntity as Entity
from control_plane.errors import BadRequest, TemporarilyUnavailable
from control_plane.gateway.metrics import GatewayMetrics
from control_plane.settings import Settings
from deploy.providers.base import AppNotFound, AppPhase, AppStatus, Provider
from workers.engine.request import Completion, TokenChunk, aggregate

log = logging.getLogger(__name__)


class ReplicaFailed(Exception):
    """The replica (or its app) failed before answering; another entity may answer."""

    retry_after_s: int | None = None


class WakeTimeout(ReplicaFailed):
    """A parked entity did not get a replica within `scale_from_zero_timeout_s`."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def classify(exc: BaseException, entity: Entity) -> Exception:
    """A replica-side exception -> a client error (400) or a retryable `ReplicaFailed`."""
    if isinstance(exc, ValueError):  # the engine's validation: says what to change
        message = str(exc).splitlines()[-1] if str(exc) else type(exc).__name__
        return BadRequest(message.removeprefix("ValueError: "))
    if isinstance(exc, TimeoutError):
        return ReplicaFailed(f"served entity {entity.name!r} did not answer in time")
    return ReplicaFailed(f"served entity {entity.name!r} failed: {type(exc).__name__}")


class Slot:
    """One query's place in a served entity's bounded queue; `release()` is idempotent."""

    def __init__(self, counts: defaultdict[str, int], app: str, gauge: Any) -> None:
        self._counts = counts
        self._app = app
        self._gauge = gauge
        self._held = True
        counts[app] += 1
        gauge.inc()

    def release(self) -> None:
        if self._held:
            self._held = False
            self._counts[self._app] -= 1
            self._gauge.dec()


@dataclass(frozen=True)
class Timeouts:
    first_chunk_s: float
    total_s: float


class Dispatcher:
    def __init__(
        self,
        provider: Provider,
        settings: Settings,
        metrics: GatewayMetrics,
        app_statuses: Callable[[], dict[str, AppStatus]],
    ) -> None:
        self._provider = provider
        self._app_statuses = app_statuses
        self._settings = settings
        self._metrics = metrics
        self._in_flight: defaultdict[str, int] = defaultdict(int)
        self._handles: dict[str, tuple[Any, Any]] = {}

    # -- admission ---------------------------------------------------------------------
    def capacity(self, entity: Entity) -> int:
        per_replica = self._settings.workers.max_ongoing_requests
        return entity.max_replicas * per_replica + self._settings.gateway.max_queued_requests

    def acquire(self, endpoint: str, entity: Entity) -> Slot:
        """Take one in-flight place on `entity`, or 503 at once when its queue is full."""
        app = entity.app_name
        if self._in_flight[app] >= self.capacity(entity):
            self._metrics.saturated.labels(endpoint, entity.name).inc()
            raise TemporarilyUnavailable(
                f"served entity {entity.name!r} is saturated "
                f"({self._in_flight[app]} requests in flight); retry shortly",
                headers={"Retry-After": str(self._settings.gateway.retry_after_s)},
            )
        gauge = self._metrics.series(endpoint, entity.name).queue_depth
        return Slot(self._in_flight, app, gauge)

    def parked(self, entity: Entity) -> bool:
        """Scaled to zero when the reconciler last looked: a query must wake it."""
        if not entity.scale_to_zero_enabled:
            return False
        status = self._app_statuses().get(entity.app_name)
        return status is not None and status.running_replicas == 0

    def timeouts(self, entity: Entity, *, parked: bool) -> Timeouts:
        gateway = self._settings.gateway
        first = gateway.scale_from_zero_timeout_s if parked else gateway.first_token_timeout_s
        return Timeouts(first_chunk_s=first, total_s=self._settings.query_timeout_s + first)

    def _wake(self, endpoint: str, entity: Entity) -> bool:
        parked = self.parked(entity)
        if parked:
            self._metrics.wakes.labels(endpoint, entity.name).inc()
        return parked

    # -- calls -------------------------------------------------------------------------
    def _check_not_retired(self, entity: Entity) -> None:
        """A route read before a config update may name an app that is now being deleted;
        a call to it would wait for replicas that never come, so fail it at once (the
        router then re-reads the endpoint). Judged from the reconciler's last listing."""
        statuses = self._app_statuses()
        if not statuses:
            return  # no listing in this process (reconciler off, or not ticked yet)
        status = statuses.get(entity.app_name)
        if status is None or status.phase == AppPhase.DELETING:
            raise ReplicaFailed(f"served entity {entity.name!r} has been retired")

    async def handle(self, entity: Entity, *, stream: bool = False) -> Any:
        self._check_not_retired(entity)
        app = entity.app_name
        pair = self._handles.get(app)
        if pair is None:
            try:  # the first lookup asks the Serve controller: keep it off the event loop
                handle = await asyncio.to_thread(self._provider.handle, app)
            except AppNotFound as exc:
                raise ReplicaFailed(f"served entity {entity.name!r}: {exc}") from None
            pair = self._handles.setdefault(app, (handle, handle.options(stream=True)))
        return pair[1] if stream else pair[0]

    def forget(self, app: str) -> None:
        self._handles.pop(app, None)

    async def complete(self, endpoint: str, entity: Entity, request: Any) -> Completion:
        """A whole answer. A parked entity is woken through a stream, so that the wait for
        its first replica is bounded on its own (`scale_from_zero_timeout_s`)."""
        if not self._wake(endpoint, entity):
            result: Completion = await self.call(entity, "complete", request)
            return result
        first, rest = await self._open(entity, request, parked=True)
        return aggregate([first] + [chunk async for chunk in rest])

    async def embed(self, endpoint: str, entity: Entity, inputs: list[list[int]]) -> Any:
        return await self.call(entity, "embed", inputs, parked=self._wake(endpoint, entity))

    async def open_stream(
        self, endpoint: str, entity: Entity, request: Any
    ) -> tuple[TokenChunk, AsyncIterator[TokenChunk]]:
        """Start a stream and wait (bounded) for its first chunk; then the rest."""
        return await self._open(entity, request, parked=self._wake(endpoint, entity))

    async def call(self, entity: Entity, method: str, *args: Any, parked: bool = False) -> Any:
        """A unary replica method (`complete`, `embed`), bounded by the entity's timeouts."""
        handle = await self.handle(entity, stream=False)
        limits = self.timeouts(entity, parked=parked)
        response = getattr(handle, method).remote(*args)
        try:
            async with asyncio.timeout(limits.total_s):
                return await response
        except asyncio.CancelledError:
            response.cancel()
            raise
        except Exception as exc:
            if isinstance(exc, TimeoutError):
                response.cancel()
            self._on_failure(entity, exc)
            raise classify(exc, entity) from exc

    async def _open(
        self, entity: Entity, request: Any, *, parked: bool
    ) -> tuple[TokenChunk, AsyncIterator[TokenChunk]]:
        handle = await self.handle(entity, stream=True)
        limits = self.timeouts(entity, parked=parked)
        generator = handle.generate.remote(request)
        try:
            async with asyncio.timeout(limits.first_chunk_s):
                first: TokenChunk = await generator.__anext__()
        except BaseException as exc:
            generator.cancel()
            if isinstance(exc, asyncio.CancelledError):
                raise
            if isinstance(exc, StopAsyncIteration):
                exc = RuntimeError("the replica ended the stream without a chunk")
            self._on_failure(entity, exc)
            if parked and isinstance(exc, TimeoutError):
                raise WakeTimeout(
                    f"served entity {entity.name!r} is scaled to zero and did not wake "
                    f"within {limits.first_chunk_s:g} s; it is starting, retry later",
                    self._settings.gateway.wake_retry_after_s,
                ) from exc
            raise classify(exc, entity) from exc
        return first, self._rest(entity, generator, limits.total_s)

    async def _rest(
        self, entity: Entity, generator: Any, total_s: float
    ) -> AsyncIterator[TokenChunk]:
        """The remaining chunks; the deadline bounds each wait (never spans a `yield`, so
        a slow client is not mistaken for a slow replica)."""
        deadline = asyncio.get_running_loop().time() + total_s
        finished = False
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk: TokenChunk = await generator.__anext__()
                except StopAsyncIteration:
                    finished = True
                    return
                except TimeoutError as exc:
                    raise ReplicaFailed(
                        f"served entity {entity.name!r} did not finish within {total_s:.0f} s"
                    ) from exc
                yield chunk
        finally:
            if not finished:
                generator.cancel()

    def _on_failure(self, entity: Entity, exc: BaseException) -> None:
        if not isinstance(exc, ValueError):
            log.warning("served entity %s failed: %r", entity.name, exc)
            self.forget(entity.app_name)  # a fresh handle next time (app may be redeployed)
