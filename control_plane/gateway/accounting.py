"""One accepted query's bookkeeping: its usage row, rate-limit settlement and metrics.

A query is *accepted* once it is authenticated, routed and admitted by the rate limits.
From then on every outcome — success, a client error found later (e.g. a prompt longer
than the context), cancellation mid-stream, a server error — ends in `finish(status)`,
which runs once: it writes exactly one usage row (the engine's token counts, keyed by the
request id so a retry cannot double it), settles the rate-limit reservation with the real
token count, and records metrics. The row is committed before the caller sends the
response's final byte (group commit: concurrent rows share one transaction).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from billing.ledger import InferencePayload, UsageLedger, UsageRow
from control_plane.gateway.metrics import GatewayMetrics
from control_plane.gateway.ratelimit.limiter import RateLimiter, Reservation
from control_plane.gateway.targets import QueryTarget
from control_plane.ids import utcnow
from workers.engine.request import Usage

log = logging.getLogger(__name__)
CLIENT_CLOSED = 499  # the client went away mid-response (nginx's convention)


@dataclass
class Accepted:
    request_id: str
    target: QueryTarget
    streaming: bool
    client_request_id: str | None
    usage_context: dict[str, Any] | None
    reservation: Reservation | None
    ledger: UsageLedger
    limiter: RateLimiter
    metrics: GatewayMetrics
    entity: str = ""  # the served entity that answered (or was last tried)
    usage: Usage = field(default_factory=lambda: Usage(0, 0))
    request_payload: str | None = None  # inference table, when enabled
    response_payload: str = ""
    request_time: Any = field(default_factory=utcnow)
    started: float = field(default_factory=time.monotonic)
    _last_chunk_at: float | None = None
    _finished: asyncio.Future[None] | None = None

    # -- progress ------------------------------------------------------------------------
    def on_chunk(self, usage: Usage, text: str = "") -> None:
        """A chunk reached the client: its usage (the whole request so far) now counts."""
        now = time.monotonic()
        series = self.metrics.series(self.target.endpoint_name, self.entity)
        if self._last_chunk_at is None:
            series.ttft.observe(now - self.started)
        else:
            series.inter_token.observe(now - self._last_chunk_at)
        self._last_chunk_at = now
        self.usage = usage
        if self.request_payload is not None:
            self.response_payload += text

    # -- the one ending ------------------------------------------------------------------
    def finish(self, status: int) -> asyncio.Future[None]:
        """Record the outcome once; await the result before sending the final byte.

        The write runs in its own task, so a cancelled caller (client gone) still gets
        its row; calling again returns the first call's future.
        """
        if self._finished is None:
            self._finished = asyncio.ensure_future(self._record(status))
        return self._finished

    async def _record(self, status: int) -> None:
        series = self.metrics.series(self.target.endpoint_name, self.entity)
        self.metrics.requests.labels(self.target.endpoint_name, self.entity, str(status)).inc()
        series.e2e.observe(time.monotonic() - self.started)
        series.input_tokens.inc(self.usage.prompt_tokens)
        series.output_tokens.inc(self.usage.completion_tokens)
        caller = self.target.caller
        row = UsageRow(
            databricks_request_id=self.request_id,
            client_request_id=self.client_request_id,
            requester=caller.name,
            status_code=status,
            request_time=self.request_time,
            served_entity_id=self.entity,
            endpoint_name=self.target.endpoint_name,
            endpoint_id=self.target.endpoint_id,
            workspace_id=caller.workspace_id,  # the tenant billed (shared endpoints have none)
            account_id=caller.account_id,
            input_token_count=self.usage.prompt_tokens,
            output_token_count=self.usage.completion_tokens,
            request_streaming=self.streaming,
            usage_context=self.usage_context,
        )
        inference = None
        if self.request_payload is not None:
            inference = InferencePayload(self.request_payload, self.response_payload or None)
        try:
            if self.reservation is not None:
                await self.limiter.settle(self.reservation, self.usage.total_tokens)
        except Exception:  # a limiter outage must not lose the usage row
            log.exception("settling rate limits of %s failed", self.request_id)
        await self.ledger.record(row, inference)
