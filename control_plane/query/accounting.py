"""One accepted query's bookkeeping: its usage row, rate-limit settlement and metrics.

A query is *accepted* once it is authenticated, routed and admitted by the rate limits.
From then on it runs inside `async with Accounting(...)`, and leaving that block — however
it is left — records the outcome exactly once: success (200), a client error found late
(e.g. a prompt longer than the context: its 4xx), a server error (500/503), or the client
gone (499). Recording writes one usage row (the engine's token counts, keyed by the request
id so no retry can double it), settles the rate-limit reservation with the real token
count, and updates metrics. The row is committed by the group-commit ledger before the
block ends, and the block ends before the response's final byte is sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from types import TracebackType

from billing.ledger import InferencePayload, UsageLedger, UsageRow
from control_plane.endpoints.config import ServedEntity
from control_plane.errors import ApiError
from control_plane.query.metrics import GatewayMetrics
from control_plane.query.ratelimit.limiter import RateLimiter, Reservation
from control_plane.query.targets import QueryTarget
from workers.engine.request import Usage

log = logging.getLogger(__name__)
CLIENT_CLOSED = 499  # the client went away mid-response (nginx's convention)


class Accounting:
    def __init__(
        self,
        *,
        request_id: str,
        target: QueryTarget,
        entity: ServedEntity,
        streaming: bool,
        client_request_id: str | None,
        usage_context: dict[str, str] | None,
        reservation: Reservation | None,
        request_time: datetime,
        request_payload: str | None,
        ledger: UsageLedger,
        limiter: RateLimiter,
        metrics: GatewayMetrics,
    ) -> None:
        self.request_id = request_id
        self.target = target
        self.entity = entity  # the served entity that answered (or was last tried)
        self.usage = Usage(0, 0)  # what was delivered (or computed) so far
        self._streaming = streaming
        self._client_request_id = client_request_id
        self._usage_context = usage_context
        self._reservation = reservation
        self._request_time = request_time
        self._request_payload = request_payload  # inference table, when enabled
        self._response_payload: list[str] = []
        self._ledger = ledger
        self._limiter = limiter
        self._metrics = metrics
        self._started = time.monotonic()
        self._last_chunk_at: float | None = None

    # -- progress ------------------------------------------------------------------------
    def tried(self, entity: ServedEntity) -> None:
        """The query went to `entity` (the first candidate, or a fallback)."""
        self.entity = entity

    def prompt_processed(self, usage: Usage) -> None:
        """The replica computed the prompt (its first chunk came): the prompt counts even
        if the client leaves before the chunk is sent."""
        self.usage = Usage(usage.prompt_tokens, 0)

    def delivered(self, usage: Usage, text: str = "") -> None:
        """A chunk (or the whole answer) reached the client: its usage — the whole
        request's so far — now counts."""
        now = time.monotonic()
        series = self._metrics.series(self.target.endpoint_name, self.entity.name)
        if self._last_chunk_at is None:
            series.ttft.observe(now - self._started)
        else:
            series.inter_token.observe(now - self._last_chunk_at)
        self._last_chunk_at = now
        self.usage = usage
        if self._request_payload is not None:
            self._response_payload.append(text)

    # -- the one ending ------------------------------------------------------------------
    async def __aenter__(self) -> Accounting:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Record the outcome. The write runs in a task of its own, so a cancelled caller
        (the client left) still gets its row; the caller waits for it otherwise."""
        status = _status_of(exc)
        write = asyncio.ensure_future(self._record(status))
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            _pending.add(write)  # keep it alive; it finishes on its own
            write.add_done_callback(_pending.discard)
            raise

    async def _record(self, status: int) -> None:
        endpoint, entity = self.target.endpoint_name, self.entity
        series = self._metrics.series(endpoint, entity.name)
        self._metrics.requests.labels(endpoint, entity.name, str(status)).inc()
        series.e2e.observe(time.monotonic() - self._started)
        series.input_tokens.inc(self.usage.prompt_tokens)
        series.output_tokens.inc(self.usage.completion_tokens)
        caller = self.target.caller
        row = UsageRow(
            databricks_request_id=self.request_id,
            client_request_id=self._client_request_id,
            requester=caller.name,
            status_code=status,
            request_time=self._request_time,
            served_entity_id=entity.name,
            entity_name=entity.entity_name,
            entity_version=entity.entity_version,
            model_family=entity.model_family,
            workload_type=entity.workload_type,
            endpoint_name=endpoint,
            endpoint_id=self.target.endpoint_id,
            workspace_id=caller.workspace_id,  # the tenant billed (shared endpoints have none)
            account_id=caller.account_id,
            input_token_count=self.usage.prompt_tokens,
            output_token_count=self.usage.completion_tokens,
            request_streaming=self._streaming,
            usage_context=self._usage_context,
        )
        inference = None
        if self._request_payload is not None:
            response = "".join(self._response_payload) or None
            inference = InferencePayload(self._request_payload, response)
        try:
            if self._reservation is not None:
                await self._limiter.settle(self._reservation, self.usage.total_tokens)
        except Exception:  # a limiter outage must not lose the usage row
            log.exception("settling rate limits of %s failed", self.request_id)
        await self._ledger.record(row, inference)


_pending: set[asyncio.Future[None]] = set()  # rows still being written for gone clients


def _status_of(exc: BaseException | None) -> int:
    if exc is None:
        return 200
    if isinstance(exc, ApiError):
        return exc.status_code
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return CLIENT_CLOSED
    return 500
