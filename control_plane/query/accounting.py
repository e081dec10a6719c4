"""One accepted query's bookkeeping: its usage row, rate-limit settlement and metrics.

A query is *accepted* once it is authenticated, routed and admitted by the rate limits.
From then on it runs inside `async with Accounting(...)`, and leaving that block — however
it is left — records the outcome exactly once: success (200), a client error found late
(e.g. a prompt longer than the context: its 4xx), a server error (500/503), or the client
gone (499). Recording writes one usage row (the engine's token counts, keyed by the request
id so no retry can double it), settles the rate-limit reservation with the real token
count, and updates metrics. The row is committed by the group-commit ledger before the
block ends, and the block ends before the response's final byte is sent.

A crash (kill -9) must not lose what was delivered before that final row, so entering the
block opens the request in the ledger (a `usage_checkpoints` row) and a stream checkpoints
its delivered usage while it runs (see `billing.ledger.checkpoints`: a restarted process
settles the open rows of a dead one from their last checkpoint):

- a stream's open is awaited before dispatch: no token can be delivered before the request
  is on record. Its delivered usage is checkpointed (queued, not awaited) at its first chunk
  (the prompt counts from then), then whenever `ledger.checkpoint_tokens` more completion
  tokens were delivered or `ledger.checkpoint_interval_s` passed since the last checkpoint;
  so what is delivered but not on record is at most one checkpoint interval of tokens
  (plus those delivered while the ledger commits the last checkpoint: about a batch's
  round trip);
- a non-streaming request (a completion, an embedding) delivers its whole answer only after
  its usage row is committed, so its open is lazy (`open_later`): written only if the
  request is still running a checkpoint interval after admission, never awaited. A quick
  answer costs the query path nothing, and a long one is on record while it runs.

The final row deletes the checkpoint row in its own transaction: never both, never neither.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from types import TracebackType

from pydantic import BaseModel

from billing.ledger import InferencePayload, UsageLedger, UsageRow
from control_plane.budgets.guard import BudgetGuard, Hold
from control_plane.endpoints.config import ServedEntity
from control_plane.errors import ApiError
from control_plane.guardrails import Action, Hit
from control_plane.query.metrics import GatewayMetrics
from control_plane.query.ratelimit.limiter import RateLimiter, Reservation
from control_plane.query.targets import QueryTarget
from workers.engine.request import Usage

log = logging.getLogger(__name__)


class GuardrailOutcome(StrEnum):
    """What an endpoint's guardrails did to a request (its usage row's `guardrail_outcome`)."""

    INPUT_BLOCKED = "INPUT_BLOCKED"
    OUTPUT_BLOCKED = "OUTPUT_BLOCKED"  # a choice was cut before a blocked span
    MASKED = "MASKED"  # PII was masked, in the prompt or the answer; nothing blocked


class Direction(StrEnum):
    INPUT = "input"
    OUTPUT = "output"


CLIENT_CLOSED = 499  # the client went away mid-response (nginx's convention)
ADMITTED = 200  # the status of an open request's row: not stored (a settled row is 520)


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
        budgets: BudgetGuard | None = None,
        budget_hold: Hold | None = None,
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
        self._choices: dict[int, list[str]] = {}  # a stream's text so far, by choice
        self._answer: BaseModel | None = None  # a whole answer, as sent
        self._ledger = ledger
        self._limiter = limiter
        self._metrics = metrics
        self._budgets = budgets
        self._budget_hold = budget_hold  # the blocking budgets' reservation, settled last
        self._started = time.monotonic()
        self._last_chunk_at: float | None = None
        self._checkpointed = Usage(0, 0)  # the usage of the last checkpoint
        self._checkpointed_at = self._started
        self._guardrail_hits = 0
        self._guardrail_outcome: GuardrailOutcome | None = None

    # -- progress ------------------------------------------------------------------------
    def tried(self, entity: ServedEntity) -> None:
        """The query went to `entity` (the first candidate, or a fallback)."""
        self.entity = entity

    def prompt_processed(self, usage: Usage) -> None:
        """The replica computed the prompt (its first chunk came): the prompt counts even
        if the client leaves before the chunk is sent."""
        self.usage = Usage(usage.prompt_tokens, 0)
        if self._streaming:
            self._checkpoint(time.monotonic())

    def delivered(self, usage: Usage, texts: Mapping[int, str] | None = None) -> None:
        """A chunk (or the whole answer) reached the client: its usage — the whole
        request's so far — now counts; `texts`: its text by choice index."""
        now = time.monotonic()
        series = self._metrics.series(self.target.labels, self.entity.name)
        if self._last_chunk_at is None:
            series.ttft.observe(now - self._started)
        else:
            series.inter_token.observe(now - self._last_chunk_at)
        self._last_chunk_at = now
        self.usage = usage
        if self._request_payload is not None and texts:
            for index, text in texts.items():
                self._choices.setdefault(index, []).append(text)
        if self._streaming:
            self._checkpoint(now)

    def guarded(self, direction: Direction, hits: Sequence[Hit], *, blocked: bool) -> None:
        """The endpoint's guardrails matched `hits` in the prompt or the answer; `blocked`:
        they stopped it. Counted in the metrics now and in the usage row at the end."""
        counter, labels = self._metrics.guardrail_hits, self.target.labels
        for hit in hits:
            counter.labels(*labels, direction.value, hit.kind.value, hit.action.value).inc()
        self._guardrail_hits += len(hits)
        if blocked:
            outcome = (
                GuardrailOutcome.INPUT_BLOCKED
                if direction is Direction.INPUT
                else GuardrailOutcome.OUTPUT_BLOCKED
            )
            if self._guardrail_outcome is not GuardrailOutcome.INPUT_BLOCKED:
                self._guardrail_outcome = outcome
        elif self._guardrail_outcome is None and any(h.action is Action.MASK for h in hits):
            self._guardrail_outcome = GuardrailOutcome.MASKED

    def answered(self, answer: BaseModel) -> None:
        """The whole answer (not a stream) as the client gets it: the inference table keeps
        its JSON."""
        if self._request_payload is not None:
            self._answer = answer

    def _response_payload(self) -> str | None:
        """The answer's JSON as sent; for a stream, its choices' text by index (each choice
        apart) with the usage, as far as it got."""
        if self._answer is not None:
            return self._answer.model_dump_json()
        if not self._choices:
            return None
        return json.dumps(
            {
                "object": "stream",
                "choices": [
                    {"index": index, "text": "".join(parts)}
                    for index, parts in sorted(self._choices.items())
                ],
                "usage": {
                    "prompt_tokens": self.usage.prompt_tokens,
                    "completion_tokens": self.usage.completion_tokens,
                },
            },
            ensure_ascii=False,
        )

    def _checkpoint(self, now: float) -> None:
        """Checkpoint the usage so far if the prompt is new to the record, or one checkpoint
        interval (tokens or time) passed since the last checkpoint."""
        usage, last = self.usage, self._checkpointed
        if usage == last:
            return
        ledger = self._ledger
        if (
            usage.prompt_tokens != last.prompt_tokens
            or usage.completion_tokens - last.completion_tokens >= ledger.checkpoint_tokens
            or now - self._checkpointed_at >= ledger.checkpoint_interval_s
        ):
            ledger.checkpoint(self._row(ADMITTED))
            self._checkpointed, self._checkpointed_at = usage, now

    # -- the one ending ------------------------------------------------------------------
    async def __aenter__(self) -> Accounting:
        """Open the request in the ledger: a stream's open is committed before dispatch, a
        non-streaming request's lazily (see the module's docstring)."""
        try:
            if self._streaming:
                await self._ledger.open(self._row(ADMITTED))
            else:
                self._ledger.open_later(self.request_id, functools.partial(self._row, ADMITTED))
        except asyncio.CancelledError as cancelled:
            # The block is never entered, so record the outcome here (a 499, nothing used).
            await self.__aexit__(type(cancelled), cancelled, None)
            raise
        except Exception as error:  # its final row is still written when it ends
            log.warning(
                "opening request %s in the usage ledger failed (%s)",
                self.request_id,
                type(error).__name__,
            )
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
        labels, entity = self.target.labels, self.entity
        series = self._metrics.series(labels, entity.name)
        self._metrics.requests.labels(*labels, entity.name, str(status)).inc()
        series.e2e.observe(time.monotonic() - self._started)
        series.input_tokens.inc(self.usage.prompt_tokens)
        series.output_tokens.inc(self.usage.completion_tokens)
        row = self._row(status)
        inference = None
        if self._request_payload is not None:
            inference = InferencePayload(self._request_payload, self._response_payload())
        try:
            if self._reservation is not None:
                await self._limiter.settle(self._reservation, self.usage.total_tokens)
        except Exception:  # a limiter outage must not lose the usage row
            log.exception("settling rate limits of %s failed", self.request_id)
        try:
            await self._ledger.record(row, inference)
        finally:  # committed (or lost): the reservation becomes what it cost
            self._settle_budgets()

    def _settle_budgets(self) -> None:
        if self._budgets is None or self._budget_hold is None:
            return
        usage, workspace = self.usage, self.target.caller.workspace_id
        cost = self._budgets.query_cost(
            self.entity, workspace, usage.prompt_tokens, usage.completion_tokens
        )
        self._budgets.settle(self._budget_hold, cost)

    def _row(self, status: int) -> UsageRow:
        """The usage row as it stands, with `status`."""
        entity, caller = self.entity, self.target.caller
        return UsageRow(
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
            endpoint_name=self.target.endpoint_name,
            endpoint_id=self.target.endpoint_id,
            workspace_id=caller.workspace_id,  # the tenant billed (shared endpoints have none)
            account_id=caller.account_id,
            input_token_count=self.usage.prompt_tokens,
            output_token_count=self.usage.completion_tokens,
            request_streaming=self._streaming,
            usage_context=self._usage_context,
            execution_duration_ms=round((time.monotonic() - self._started) * 1000),
            guardrail_hits=self._guardrail_hits or None,
            guardrail_outcome=None if (o := self._guardrail_outcome) is None else o.value,
        )


_pending: set[asyncio.Future[None]] = set()  # rows still being written for gone clients


def _status_of(exc: BaseException | None) -> int:
    if exc is None:
        return 200
    if isinstance(exc, ApiError):
        return exc.status_code
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return CLIENT_CLOSED
    return 500
