"""Sending a query to the replicas of its candidate served entities: bounded queues,
timeouts, and fallback from one candidate to the next.

- Backpressure: one process keeps at most `max_replicas x max_ongoing_requests +
  max_queued_requests` queries in flight per served entity; past that a query gets 503
  with `Retry-After` at once instead of joining an unbounded queue.
- Timeouts: a stream must yield its first chunk within `first_token_timeout_s`
  (`scale_from_zero_timeout_s` when the entity may be parked: the call itself wakes it),
  then each further chunk before `query_timeout_s` + that first-chunk allowance has passed
  since the first one; a non-streaming call is bounded by the same sum as a whole. A
  timed-out call is cancelled on the replica, so a stuck replica never holds other
  requests.
- Fallback: a failure before the first token (replica died, app gone, engine draining,
  timeout, a full queue) moves on to the next candidate entity (`first_answer`); client
  errors (the engine's `ValueError`s) are not retried. When every candidate failed, the
  query gets 503 (`EntitiesUnavailable`) with the most useful Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client import Gauge
from ray.exceptions import RayActorError
from ray.serve.exceptions import ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponse, DeploymentResponseGenerator

from control_plane.endpoints.config import ServedEntity as Entity
from control_plane.endpoints.metrics import EndpointLabels
from control_plane.errors import ApiError, BadRequest, TemporarilyUnavailable
from control_plane.query.metrics import GatewayMetrics
from control_plane.settings import Settings
from deploy.providers.base import AppNotFound, AppPhase, AppStatus, Provider
from workers.engine.embedding import EmbeddingResult
from workers.engine.request import Completion, GenerationRequest, TokenChunk, aggregate

log = logging.getLogger(__name__)
T = TypeVar("T")
Stream = tuple[TokenChunk, AsyncGenerator[TokenChunk, None]]  # the first chunk, the rest


class EntitiesUnavailable(TemporarilyUnavailable):
    """No candidate entity answered (each failed before its first token, or was full)."""


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


def interrupted(exc: BaseException, entity: Entity) -> Exception:
    """A replica-side exception after the first chunk -> the error that ends the stream,
    worded for the client: the engine's own message (the last line of Ray's report), or
    that the replica died, never Ray's text about it (actor ids, pids, addresses, internal
    app names)."""
    if isinstance(exc, ValueError):
        return classify(exc, entity)
    if isinstance(exc, RayActorError | ReplicaUnavailableError):
        return ReplicaFailed(
            f"served entity {entity.name!r} failed mid-answer: its replica stopped "
            f"({type(exc).__name__}); the answer is incomplete"
        )
    lines = str(exc).strip().splitlines()
    return ReplicaFailed(
        f"served entity {entity.name!r} failed mid-answer: "
        f"{lines[-1] if lines else type(exc).__name__}"
    )


class Slot:
    """One query's place in a served entity's bounded queue; `release()` is idempotent."""

    def __init__(self, counts: defaultdict[str, int], app: str, gauge: Gauge) -> None:
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


class Replicas:
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
        self._handles: dict[str, tuple[DeploymentHandle, DeploymentHandle]] = {}

    # -- admission ---------------------------------------------------------------------
    def capacity(self, entity: Entity) -> int:
        per_replica = self._settings.workers.max_ongoing_requests
        return entity.max_replicas * per_replica + self._settings.gateway.max_queued_requests

    def acquire(self, labels: EndpointLabels, entity: Entity) -> Slot:
        """Take one in-flight place on `entity`, or 503 at once when its queue is full."""
        app = entity.app_name
        if self._in_flight[app] >= self.capacity(entity):
            self._metrics.saturated.labels(*labels, entity.name).inc()
            raise TemporarilyUnavailable(
                f"served entity {entity.name!r} is saturated "
                f"({self._in_flight[app]} requests in flight); retry shortly",
                headers={"Retry-After": str(self._settings.gateway.retry_after_s)},
            )
        gauge = self._metrics.series(labels, entity.name).queue_depth
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

    def _wake(self, labels: EndpointLabels, entity: Entity) -> bool:
        parked = self.parked(entity)
        if parked:
            self._metrics.wakes.labels(*labels, entity.name).inc()
        return parked

    # -- answering from the first candidate that can -------------------------------------
    async def first_answer(
        self,
        labels: EndpointLabels,
        candidates: list[Entity],
        call: Callable[[Entity], Awaitable[T]],
        tried: Callable[[Entity], None],
    ) -> tuple[Entity, T, Slot]:
        """`call(entity)` on the first candidate, then (before any token) the next ones.
        `tried(entity)` hears of each attempt. Returns the answering entity, its answer
        and the in-flight slot it holds (the caller releases it once the answer is sent)."""
        last: Exception | None = None
        for attempt, entity in enumerate(candidates):
            tried(entity)
            try:
                slot = self.acquire(labels, entity)
            except TemporarilyUnavailable as exc:
                last = exc
            else:
                try:
                    return entity, await call(entity), slot
                except (ReplicaFailed, TemporarilyUnavailable) as exc:
                    last = exc
                    slot.release()
                except BaseException:
                    slot.release()
                    raise
            if attempt + 1 < len(candidates):
                self._metrics.fallbacks.labels(*labels, entity.name).inc()
        retry_after = getattr(last, "retry_after_s", None) or self._settings.gateway.retry_after_s
        if isinstance(last, ApiError) and last.headers:
            retry_after = int(last.headers.get("Retry-After", retry_after))
        raise EntitiesUnavailable(str(last), headers={"Retry-After": str(retry_after)})

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

    async def handle(self, entity: Entity, *, stream: bool = False) -> DeploymentHandle:
        self._check_not_retired(entity)
        app = entity.app_name
        pair = self._handles.get(app)
        if pair is None:
            try:  # the first lookup asks the Serve controller: keep it off the event loop
                handle: DeploymentHandle = await asyncio.to_thread(self._provider.handle, app)
            except AppNotFound as exc:
                raise ReplicaFailed(f"served entity {entity.name!r}: {exc}") from None
            pair = self._handles.setdefault(app, (handle, handle.options(stream=True)))
        return pair[1] if stream else pair[0]

    def forget(self, app: str) -> None:
        self._handles.pop(app, None)

    async def complete(
        self, labels: EndpointLabels, entity: Entity, request: GenerationRequest
    ) -> Completion:
        """A whole answer. A parked entity is woken through a stream, so that the wait for
        its first replica is bounded on its own (`scale_from_zero_timeout_s`)."""
        if not self._wake(labels, entity):
            handle = await self.handle(entity)
            result: Completion = await self._unary(
                entity, _unary(handle.complete.remote(request)), parked=False
            )
            return result
        first, rest = await self._open(entity, request, parked=True)
        return aggregate([first] + [chunk async for chunk in rest])

    async def embed(
        self, labels: EndpointLabels, entity: Entity, inputs: list[list[int]]
    ) -> EmbeddingResult:
        parked = self._wake(labels, entity)
        handle = await self.handle(entity)
        result: EmbeddingResult = await self._unary(
            entity, _unary(handle.embed.remote(inputs)), parked=parked
        )
        return result

    async def open_stream(
        self, labels: EndpointLabels, entity: Entity, request: GenerationRequest
    ) -> Stream:
        """Start a stream and wait (bounded) for its first chunk; then the rest."""
        return await self._open(entity, request, parked=self._wake(labels, entity))

    async def _unary(self, entity: Entity, response: DeploymentResponse[T], *, parked: bool) -> T:
        """The answer of a unary replica call (`complete`, `embed`), bounded by the
        entity's timeouts; cancelled on the replica when it runs out or the caller leaves."""
        limits = self.timeouts(entity, parked=parked)
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

    async def _open(self, entity: Entity, request: GenerationRequest, *, parked: bool) -> Stream:
        handle = await self.handle(entity, stream=True)
        limits = self.timeouts(entity, parked=parked)
        generator = handle.generate.remote(request)
        assert isinstance(generator, DeploymentResponseGenerator), "a streaming handle"
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
        self, entity: Entity, generator: DeploymentResponseGenerator, total_s: float
    ) -> AsyncGenerator[TokenChunk, None]:
        """The remaining chunks. Two bounds limit each wait (never a `yield`, so a slow
        client is not mistaken for a slow replica): the whole answer's deadline, and
        `gateway.stream_idle_timeout_s` between two chunks (a replica frozen rather than
        dead would otherwise hold the stream until the deadline)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + total_s
        idle_s = self._settings.gateway.stream_idle_timeout_s
        finished = False
        try:
            while True:
                stalled_at = loop.time() + idle_s
                try:
                    async with asyncio.timeout_at(min(deadline, stalled_at)):
                        chunk: TokenChunk = await generator.__anext__()
                except StopAsyncIteration:
                    finished = True
                    return
                except TimeoutError as exc:
                    if stalled_at < deadline:
                        self._on_failure(entity, exc)
                        raise ReplicaFailed(
                            f"served entity {entity.name!r} sent nothing for {idle_s:g} s "
                            "mid-answer; the answer is incomplete"
                        ) from exc
                    raise ReplicaFailed(
                        f"served entity {entity.name!r} did not finish within {total_s:.0f} s"
                    ) from exc
                except Exception as exc:  # the replica died, or its engine failed
                    self._on_failure(entity, exc)
                    raise interrupted(exc, entity) from exc
                yield chunk
        finally:
            if not finished:
                generator.cancel()

    def _on_failure(self, entity: Entity, exc: BaseException) -> None:
        if not isinstance(exc, ValueError):
            log.warning("served entity %s failed: %r", entity.name, exc)
            self.forget(entity.app_name)  # a fresh handle next time (app may be redeployed)


def _unary(
    response: DeploymentResponse[T] | DeploymentResponseGenerator[T],
) -> DeploymentResponse[T]:
    assert isinstance(response, DeploymentResponse), "a unary handle call"
    return response
