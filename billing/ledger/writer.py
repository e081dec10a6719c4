"""`UsageLedger`: the group-commit writer behind `endpoint_usage` and `inference_log`.

The gateway awaits `record()` before it sends a response's final byte, so a row is never
lost to a crash after the client was answered. To make that cheap, rows that arrive while one
batch commits are written together as the next batch: one transaction and one executemany per
table, in a worker thread (the drivers are synchronous), one batch in flight at a time. Writes
are idempotent by `databricks_request_id` (INSERT ... ON CONFLICT DO NOTHING), so a retried
record keeps the first row.

The INSERTs are compiled once, when the ledger is built, and run on the driver's own
connection (the writer keeps one) with values converted by the columns' own SQLAlchemy types
(the same conversion a Core insert applies): a batch costs the database round trip, not a
statement compilation and an execution pipeline.

One row can never cost another its place. A batch whose transaction fails for what it holds
(a value the database refuses, say) is written again in halves, each half that fails is
halved again, and so on: every row that can be stored alone is committed and its caller
returns normally; only the rows that fail alone raise `LedgerWriteError`. A batch that fails
because the database cannot be reached (no connection can be had, or the connection died
under it) is not split (every row of it would fail the same way): it is written again on a
fresh connection, at once and then with backoff, for up to `reconnect_timeout_s`, so that a
restart or failover that lasts seconds costs no row and fails no request (rows arriving
meanwhile queue up and go in the next batch); only then do its rows fail.

Requests in flight go through the same batches (see `billing.ledger.checkpoints`): `open`
inserts a request's `usage_checkpoints` row at admission, `checkpoint` updates it with the
tokens delivered so far (queued, not awaited; a checkpoint still queued is replaced by the
next one), `heartbeat` refreshes the `updated_at` of every row this ledger keeps open, and
`record` deletes the request's checkpoint row in the transaction that inserts its usage row.
Within a transaction the statements run in this order: checkpoint inserts, checkpoint
updates, checkpoint deletes, usage inserts, payload inserts. A non-streaming request can be
opened lazily (`open_later`): its checkpoint row is queued only if the request is still
running `checkpoint_interval_s` later, so a quick answer costs no checkpoint write at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, cast

from sqlalchemy import Engine, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql import ClauseElement

from billing.db import BillingBase
from billing.ledger.checkpoints import CARRIED_COLUMNS, settle_interrupted
from billing.ledger.models import EndpointUsage, InferenceLog, UsageCheckpoint
from billing.ledger.rows import (
    TRUNCATION_MARKER_BYTES,
    InferencePayload,
    UsageRow,
    inference_params,
)

logger = logging.getLogger(__name__)

# How long a batch waits for an unreachable database by default: a PostgreSQL restart takes
# a few seconds, a managed failover tens; the checkpoint rows of requests in flight are
# taken for a dead process's only after `usage_checkpoint_stale_s` (60 s by default).
RECONNECT_TIMEOUT_S = 10.0
_FIRST_BACKOFF_S = 0.05  # then doubling, up to
_MAX_BACKOFF_S = 1.0


class LedgerWriteError(Exception):
    """This row was not committed: its batch failed and so did the row when written alone
    (or the database could not be reached). `__cause__` is the database error (a
    `DBAPIError` whose text carries no bound values) or an `UnstorableRowError`. Recording
    the same row again is safe (writes are idempotent by request id)."""


class UnstorableRowError(ValueError):
    """A row's values could not be converted for the driver (e.g. text that UTF-8 cannot
    encode). It names the conversion error's type only, never the value."""


class LedgerClosedError(RuntimeError):
    """`record()` was called before `start()`, after `close()`, or after the writer stopped."""


@dataclass(slots=True)
class _Pending:
    """One queued write. `committed` is None when nobody waits for it (checkpoints,
    heartbeats, lazy opens). An entry whose write became moot (a queued open or checkpoint
    of a request that has since ended) is emptied, not removed: it writes nothing."""

    usage: dict[str, Any] | None  # a request's endpoint_usage row (record)
    inference: dict[str, Any] | None  # its payloads
    committed: asyncio.Future[None] | None
    opened: dict[str, Any] | None = None  # a usage_checkpoints row to insert (open)
    progress: dict[str, Any] | None = None  # a checkpoint: the row's new counts
    closes: str | None = None  # the request whose usage_checkpoints row goes (record)
    touched: list[dict[str, Any]] | None = None  # a heartbeat: rows to refresh


@dataclass(slots=True)
class _Statements:
    """What a run of entries writes, per statement, in the entries' order."""

    opened: list[dict[str, Any]] = field(default_factory=list)
    progress: list[dict[str, Any]] = field(default_factory=list)
    touched: list[dict[str, Any]] = field(default_factory=list)
    closes: list[dict[str, Any]] = field(default_factory=list)
    usage: list[dict[str, Any]] = field(default_factory=list)
    inference: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, entries: list[_Pending]) -> _Statements:
        statements = cls()
        for entry in entries:
            if entry.opened is not None:
                statements.opened.append(entry.opened)
            if entry.progress is not None:
                statements.progress.append(entry.progress)
            if entry.touched:
                statements.touched += entry.touched
            if entry.closes is not None:
                statements.closes.append({"databricks_request_id": entry.closes})
            if entry.usage is not None:
                statements.usage.append(entry.usage)
            if entry.inference is not None:
                statements.inference.append(entry.inference)
        return statements

    @property
    def empty(self) -> bool:
        return not (
            self.opened or self.progress or self.touched or self.closes or self.usage
        )  # payloads go with usage rows


class _Unreachable(Exception):
    """The database could not be reached: no connection, or it died under the batch.
    `error` is what the rows' callers get as the cause if it stays so."""

    def __init__(self, error: Exception) -> None:
        super().__init__(type(error).__name__)
        self.error = error


class _WriteFailed(Exception):
    """A transaction failed with `error` (what its rows' callers get as the cause).
    `isolable`: the rows may be at fault, so writing them apart may store some; false when
    the database could not be reached at all (splitting would only fail again, slower)."""

    def __init__(self, error: Exception, *, isolable: bool) -> None:
        super().__init__(type(error).__name__)
        self.error = error
        self.isolable = isolable


@dataclass(slots=True)
class _Outcome:
    """How one batch went: the rows (by index) that failed and why, and the transactions
    spent writing its parts apart."""

    failed: dict[int, Exception] = field(default_factory=dict)
    first_error: Exception | None = None
    isolation_transactions: int = 0


class UsageLedger:
    """Group-commit writer of usage rows (and optional payload rows) for one asyncio loop.

    `max_batch` caps the rows per transaction. `max_delay_s` is how long a batch may wait for
    more rows before it is written; the default 0 writes as soon as the previous batch is
    done, which already batches everything that arrived meanwhile. Payload texts are capped
    at `max_payload_bytes` UTF-8 bytes each. Counters for metrics and tests:
    `batches_committed` (batches committed whole, in their one transaction),
    `batches_failed` (batches whose transaction failed, however their rows then fared),
    `rows_committed` (records acknowledged, repeats of a stored request id included, and
    rows of failed batches stored when written apart), `rows_failed` (records that raised
    `LedgerWriteError`) and `isolation_transactions` (the transactions spent writing the
    parts of failed batches apart). These count records and the batches that hold them;
    the transactions of opens, checkpoints and heartbeats alone, which no record waited
    for, count apart in `checkpoint_batches`.

    The checkpoint policy of the requests that use this ledger (`Accounting` reads it): a
    stream's delivered usage is checkpointed once `checkpoint_tokens` more completion tokens
    were delivered, or `checkpoint_interval_s` after its last checkpoint, whichever comes
    first. `owner` names this ledger's checkpoint rows (default: a fresh id); `clock` gives
    their `updated_at` (default: the wall clock, UTC).

    `reconnect_timeout_s` bounds how long a batch waits for an unreachable database (the
    time a restart or failover may take; the callers of its rows wait as long) before its
    rows fail; 0: a dropped connection is retried once, at once, and nothing more.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int = 500,
        max_delay_s: float = 0.0,
        max_payload_bytes: int = 64 * 1024,
        checkpoint_tokens: int = 16,
        checkpoint_interval_s: float = 0.5,
        owner: str | None = None,
        clock: Callable[[], datetime] | None = None,
        reconnect_timeout_s: float = RECONNECT_TIMEOUT_S,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_delay_s < 0:
            raise ValueError("max_delay_s must be >= 0")
        if max_payload_bytes < TRUNCATION_MARKER_BYTES:
            raise ValueError(f"max_payload_bytes must be >= {TRUNCATION_MARKER_BYTES}")
        if checkpoint_tokens < 1 or checkpoint_interval_s <= 0:
            raise ValueError("checkpoint_tokens must be >= 1 and checkpoint_interval_s > 0")
        if reconnect_timeout_s < 0:
            raise ValueError("reconnect_timeout_s must be >= 0")
        self._engine = engine
        self._max_batch = max_batch
        self._max_delay_s = max_delay_s
        self._max_payload_bytes = max_payload_bytes
        self.checkpoint_tokens = checkpoint_tokens
        self.checkpoint_interval_s = checkpoint_interval_s
        self.owner = owner or uuid.uuid4().hex
        self._clock = clock or _utcnow
        self._reconnect_timeout_s = reconnect_timeout_s
        self._usage_insert = _DriverStatement.insert(engine, EndpointUsage.__tablename__)
        self._inference_insert = _DriverStatement.insert(engine, InferenceLog.__tablename__)
        self._checkpoint_insert = _DriverStatement.insert(engine, UsageCheckpoint.__tablename__)
        self._checkpoint_update = _DriverStatement.checkpoint_update(engine)
        self._checkpoint_touch = _DriverStatement.checkpoint_touch(engine)
        self._checkpoint_delete = _DriverStatement.checkpoint_delete(engine)
        # Requests in flight, by id: opened (an open was queued; its row may be written),
        # their opens and checkpoints still queued, and lazy opens not queued yet.
        self._opened: set[str] = set()
        self._queued_opens: dict[str, _Pending] = {}
        self._queued_progress: dict[str, _Pending] = {}
        self._lazy_opens: dict[str, tuple[asyncio.TimerHandle, Callable[[], UsageRow]]] = {}
        self._pending: list[_Pending] = []
        self._in_flight: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._batch_full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._connection: PoolProxiedConnection | None = None  # the writer's, made on first use
        self._closing = False
        self.batches_committed = 0
        self.rows_committed = 0
        self.batches_failed = 0
        self.rows_failed = 0
        self.isolation_transactions = 0
        self.checkpoint_batches = 0

    def start(self) -> None:
        """Start the writer task on the running event loop."""
        if self._task is not None:
            raise RuntimeError("the usage ledger is already started")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-ledger")

    async def close(self) -> None:
        """Write every row recorded so far (and the open rows of requests still running,
        lazy ones included: a later process settles them), then stop; later `record()` and
        `open()` calls fail, later checkpoints are dropped."""
        for request_id, (handle, _) in list(self._lazy_opens.items()):
            handle.cancel()
            self._open_lazily(request_id)
        self._closing = True
        self._wakeup.set()
        self._batch_full.set()
        if self._task is not None:
            await self._task
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def __aenter__(self) -> UsageLedger:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def record(self, usage: UsageRow, inference: InferencePayload | None = None) -> None:
        """Return once `usage` (and `inference`, in the same transaction) is committed.

        Raises `LedgerWriteError` if its batch failed, `LedgerClosedError` if the writer is
        not running. A row whose request id is already stored is a no-op that returns
        normally. Cancelling the caller does not withdraw the row.
        """
        if not self._running:
            raise LedgerClosedError("the usage ledger is not running")
        pending = _Pending(
            usage.as_params(),
            None
            if inference is None
            else inference_params(usage, inference, self._max_payload_bytes),
            asyncio.get_running_loop().create_future(),
            closes=self._closed_by_record(usage.databricks_request_id),
        )
        self._queue(pending)
        assert pending.committed is not None
        await pending.committed

    # -- requests in flight -----------------------------------------------------------------
    async def open(self, usage: UsageRow) -> None:
        """Return once the request's checkpoint row is committed: `usage` as the request
        stands at admission (its `status_code` is not stored; a settled row gets
        `INTERRUPTED_STATUS`). Raises like `record()`. Cancelling the caller does not
        withdraw the row."""
        if not self._running:
            raise LedgerClosedError("the usage ledger is not running")
        entry = self._open_entry(usage, asyncio.get_running_loop().create_future())
        self._queue_open(entry)
        assert entry.committed is not None
        await entry.committed

    def open_later(self, request_id: str, usage: Callable[[], UsageRow]) -> None:
        """`open`, lazily and unawaited: `usage()` (the request as it stands then) is queued
        `checkpoint_interval_s` from now if the request has not been recorded by then (at
        once if the ledger closes first). For requests that deliver nothing before their
        usage row is committed: a quick one costs a timer, not even a row."""
        if not self._running:
            return
        handle = asyncio.get_running_loop().call_later(
            self.checkpoint_interval_s, self._open_lazily, request_id
        )
        self._lazy_opens[request_id] = (handle, usage)

    def checkpoint(self, usage: UsageRow) -> None:
        """Queue the usage delivered so far by an opened request (its served entity and token
        counts); not awaited. Replaces a checkpoint of the same request still queued. A
        request not opened, or already recorded, is ignored."""
        request_id = usage.databricks_request_id
        if not self._running or request_id not in self._opened:
            return
        progress = {
            **{name: getattr(usage, name) for name in _PROGRESS_COLUMNS},
            "updated_at": self._clock(),
        }
        queued = self._queued_progress.get(request_id)
        if queued is not None:
            queued.progress = progress
            return
        entry = _Pending(None, None, None, progress=progress)
        self._queued_progress[request_id] = entry
        self._queue(entry)

    def heartbeat(self) -> None:
        """Queue a refresh of `updated_at` on the checkpoint rows of every request this
        ledger keeps open, so no settler takes them for a dead process's; not awaited."""
        if not self._running or not self._opened:
            return
        now = self._clock()
        touched = [{"databricks_request_id": rid, "updated_at": now} for rid in self._opened]
        self._queue(_Pending(None, None, None, touched=touched))

    async def settle_interrupted(self, stale_after: timedelta) -> int:
        """Settle the checkpoint rows not refreshed for `stale_after` (those of dead
        processes) as interrupted requests, in a worker thread on a pooled connection; see
        `billing.ledger.checkpoints.settle_interrupted`. Returns how many it settled."""
        return await asyncio.to_thread(
            settle_interrupted, self._engine, self._clock() - stale_after
        )

    @property
    def open_requests(self) -> int:
        """Requests opened and not recorded yet (lazy opens not queued yet excluded)."""
        return len(self._opened)

    @property
    def _running(self) -> bool:
        return self._task is not None and not self._closing and not self._task.done()

    def _open_entry(self, usage: UsageRow, committed: asyncio.Future[None] | None) -> _Pending:
        params = usage.as_params()
        opened = {name: params[name] for name in CARRIED_COLUMNS}
        opened.update(owner=self.owner, updated_at=self._clock())
        return _Pending(None, None, committed, opened=opened)

    def _open_lazily(self, request_id: str) -> None:
        lazy = self._lazy_opens.pop(request_id, None)
        if lazy is None or not self._running:
            return
        try:
            entry = self._open_entry(lazy[1](), None)
        except Exception as error:  # a row that cannot be built fails at its record instead
            logger.warning("usage ledger: a lazy open failed (%s)", type(error).__name__)
            return
        self._queue_open(entry)

    def _queue_open(self, entry: _Pending) -> None:
        assert entry.opened is not None
        request_id = entry.opened["databricks_request_id"]
        self._opened.add(request_id)
        self._queued_opens[request_id] = entry
        self._queue(entry)

    def _closed_by_record(self, request_id: str) -> str | None:
        """The request is being recorded: withdraw its lazy open, queued open and queued
        checkpoint (moot now); returns its id if its checkpoint row may have been written
        (the record then deletes it), else None."""
        lazy = self._lazy_opens.pop(request_id, None)
        if lazy is not None:
            lazy[0].cancel()
        progress = self._queued_progress.pop(request_id, None)
        if progress is not None:
            progress.progress = None
        if request_id not in self._opened:
            return None
        self._opened.discard(request_id)
        queued = self._queued_opens.pop(request_id, None)
        if queued is not None:
            queued.opened = None  # never written: nothing to delete either
            return None
        return request_id

    def _queue(self, entry: _Pending) -> None:
        self._pending.append(entry)
        self._wakeup.set()
        if len(self._pending) >= self._max_batch:
            self._batch_full.set()

    async def _run(self) -> None:
        try:
            while True:
                if not self._pending:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                await self._linger()
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                self._taken(batch)
                await self._commit(batch)
        finally:
            # Reached early only if the task is cancelled: no waiter may hang forever.
            stopped = LedgerClosedError("the usage ledger stopped; the row may not be stored")
            _settle(self._in_flight + self._pending, stopped)
            self._in_flight, self._pending = [], []

    async def _linger(self) -> None:
        """Wait up to `max_delay_s` for the batch to fill (not at all by default or when
        closing)."""
        if self._closing or self._max_delay_s <= 0 or len(self._pending) >= self._max_batch:
            return
        self._batch_full.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._batch_full.wait(), self._max_delay_s)

    def _taken(self, batch: list[_Pending]) -> None:
        """`batch` is about to be written: its opens and checkpoints are no longer queued
        (a later checkpoint is queued anew; a record deletes the written row)."""
        for entry in batch:
            if entry.opened is not None:
                self._queued_opens.pop(entry.opened["databricks_request_id"], None)
            if entry.progress is not None:
                request_id = entry.progress["databricks_request_id"]
                if self._queued_progress.get(request_id) is entry:
                    del self._queued_progress[request_id]

    async def _commit(self, batch: list[_Pending]) -> None:
        self._in_flight = batch
        try:
            outcome = await asyncio.to_thread(self._write_isolating, batch)
        except Exception as error:  # a bug of the writer's own: no row may hang on it
            outcome = _Outcome(dict.fromkeys(range(len(batch)), error), error)
        self.isolation_transactions += outcome.isolation_transactions
        records = [index for index, pending in enumerate(batch) if pending.usage is not None]
        if not records:
            self.checkpoint_batches += 1
        elif outcome.first_error is None:
            self.batches_committed += 1
        else:
            self.batches_failed += 1
        if outcome.first_error is not None:
            # Only counts and the error's type and SQLSTATE: the rows are callers' data
            # (several tenants' in one batch), and a driver's message may quote a value.
            logger.warning(
                "usage ledger: a batch of %d rows failed (%s); written apart in %d more "
                "transactions: %d rows committed, %d failed",
                len(batch),
                _kind_of(outcome.first_error),
                outcome.isolation_transactions,
                len(batch) - len(outcome.failed),
                len(outcome.failed),
            )
        failed_records = sum(1 for index in records if index in outcome.failed)
        self.rows_committed += len(records) - failed_records
        self.rows_failed += failed_records
        if not outcome.failed:
            _settle(batch, None)
        else:
            for index, pending in enumerate(batch):
                cause = outcome.failed.get(index)
                if cause is None:
                    _settle([pending], None)
                else:
                    if pending.opened is not None:  # no row to checkpoint, none to delete
                        self._opened.discard(pending.opened["databricks_request_id"])
                    failure = LedgerWriteError("the usage row was not committed")
                    failure.__cause__ = cause
                    _settle([pending], failure)
        self._in_flight = []

    def _write_isolating(self, batch: list[_Pending]) -> _Outcome:
        """Write `batch` in one transaction; if that fails for what it holds, write its
        halves apart, halving each part that fails again, until the rows that fail are
        alone (runs in a worker thread). The parts go in the batch's order, so a request id
        repeated within the batch still keeps its first storable row. A failure that is not
        the rows' (the database unreachable) fails every row not yet written, at once."""
        outcome = _Outcome()
        parts = [(0, len(batch))]  # a stack of [start, end) ranges, the next one on top
        while parts:
            start, end = parts.pop()
            rows = batch[start:end]
            try:
                self._write(_Statements.of(rows))
            except _WriteFailed as failure:
                if outcome.first_error is None:
                    outcome.first_error = failure.error
                if not failure.isolable:
                    for index in range(start, end):
                        outcome.failed[index] = failure.error
                    for rest_start, rest_end in parts:
                        for index in range(rest_start, rest_end):
                            outcome.failed[index] = failure.error
                    return outcome
                if end - start == 1:
                    outcome.failed[start] = failure.error
                else:
                    middle = (start + end) // 2
                    parts += [(middle, end), (start, middle)]
            if (start, end) != (0, len(batch)):
                outcome.isolation_transactions += 1
        return outcome

    def _write(self, statements: _Statements) -> None:
        """One transaction, one executemany per statement (runs in a worker thread), on the
        writer's own driver connection: no pool checkout and liveness ping per batch. A
        failed batch drops the connection, so the next one starts on a fresh one. A batch
        that failed because the database could not be reached (the connection had died: a
        restart; or none could be had: it is still down) is written again on a fresh
        connection, at once and then with backoff, until `reconnect_timeout_s` passed since
        its first such failure; the idempotent INSERTs (and UPDATEs, DELETEs by request id)
        make a replay of a commit that did go through harmless. Raises `_WriteFailed`,
        isolable unless the database stayed unreachable."""
        if statements.empty:  # only entries whose writes became moot
            return
        first_failure: float | None = None
        delay = 0.0  # the first retry goes at once: a restart between batches is over
        while True:
            try:
                self._write_once(statements)
                return
            except _Unreachable as unreachable:
                now = time.monotonic()
                if first_failure is None:
                    first_failure = now
                    if self._reconnect_timeout_s > 0:
                        logger.warning(
                            "usage ledger: the database cannot be reached (%s); retrying "
                            "for up to %g s",
                            _kind_of(unreachable.error),
                            self._reconnect_timeout_s,
                        )
                elif now - first_failure >= self._reconnect_timeout_s:
                    raise _WriteFailed(unreachable.error, isolable=False) from unreachable.error
                time.sleep(min(delay, first_failure + self._reconnect_timeout_s - now))
                delay = min(max(2 * delay, _FIRST_BACKOFF_S), _MAX_BACKOFF_S)

    def _write_once(self, statements: _Statements) -> None:
        """`_write`'s one attempt. Raises `_Unreachable` if no connection could be had or
        the connection died under the batch, `_WriteFailed` (isolable) for any other error."""
        if self._connection is None:
            try:
                self._connection = self._engine.raw_connection()
            except Exception as error:
                raise _Unreachable(error) from error
        connection = self._connection
        try:
            cursor = connection.cursor()
            try:
                self._run_statements(cursor, statements)
            finally:
                cursor.close()
            connection.commit()
        except Exception as error:
            self._connection = None
            dead = self._is_disconnect(error, connection)
            with contextlib.suppress(Exception):
                connection.rollback()
            with contextlib.suppress(Exception):
                connection.invalidate() if dead else connection.close()
            wrapped = self._wrapped(error, dead)
            if dead:
                raise _Unreachable(wrapped) from wrapped
            raise _WriteFailed(wrapped, isolable=True) from wrapped

    def _run_statements(self, cursor: Any, statements: _Statements) -> None:
        """The batch's statements, in an order that is right for any interleaving of its
        entries (a request's open precedes its checkpoints, which precede its record) and
        that locks a checkpoint row before its usage row, as settlement does."""
        if statements.opened:
            self._checkpoint_insert.run(cursor, _first_per_request(statements.opened))
        if statements.progress:
            self._checkpoint_update.run(cursor, statements.progress)
        if statements.touched:
            self._checkpoint_touch.run(cursor, statements.touched)
        if statements.closes:
            self._checkpoint_delete.run(cursor, statements.closes)
        if statements.usage:
            self._usage_insert.run(cursor, _first_per_request(statements.usage))
        if statements.inference:
            self._inference_insert.run(cursor, _first_per_request(statements.inference))

    def _is_disconnect(self, error: Exception, connection: PoolProxiedConnection) -> bool:
        dialect = self._engine.dialect
        return isinstance(error, dialect.loaded_dbapi.Error) and dialect.is_disconnect(
            error, connection.dbapi_connection, None
        )

    def _wrapped(self, error: Exception, dead: bool) -> Exception:
        """A driver error as SQLAlchemy's `DBAPIError` (as an engine would raise it), its
        text carrying no bound values; a value the conversion refused (its message may
        quote the value: UnicodeEncodeError does) as an `UnstorableRowError` naming its
        type only; any other error as it is."""
        dialect = self._engine.dialect
        if isinstance(error, ValueError | TypeError):
            return UnstorableRowError(
                f"a value could not be converted for the database ({type(error).__name__})"
            )
        if not isinstance(error, dialect.loaded_dbapi.Error):
            return error
        return DBAPIError.instance(
            self._usage_insert.sql,
            None,
            error,
            dialect.loaded_dbapi.Error,
            hide_parameters=True,
            connection_invalidated=dead,
            dialect=dialect,
        )


class _DriverStatement:
    """One ledger statement, compiled once for the engine's dialect, with named parameters
    `columns` of `table_name`; `run` converts each row's values with the columns' bind
    processors and hands the batch to the driver cursor's executemany."""

    def __init__(
        self, engine: Engine, table_name: str, statement: ClauseElement, columns: tuple[str, ...]
    ) -> None:
        table = BillingBase.metadata.tables[table_name]
        dialect = engine.dialect
        if dialect.name not in ("postgresql", "sqlite"):
            raise ValueError(f"the usage ledger supports SQLite and PostgreSQL, not {dialect.name}")
        # Rows are dicts, so the SQL names its parameters; pysqlite's default is positional.
        named = (
            cast("type[DefaultDialect]", type(dialect))(paramstyle="named")
            if dialect.positional
            else dialect
        )
        self.columns = columns
        self.sql = str(statement.compile(dialect=named, column_keys=list(columns)))
        self._processors: tuple[tuple[str, Callable[[Any], Any]], ...] = tuple(
            (name, processor)
            for name in columns
            if (processor := table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
            is not None
        )

    @classmethod
    def insert(cls, engine: Engine, table_name: str) -> _DriverStatement:
        """`INSERT ... ON CONFLICT (request id) DO NOTHING`, every column named."""
        table = BillingBase.metadata.tables[table_name]
        conflict_target = table.primary_key.columns.values()
        statement: ClauseElement
        if engine.dialect.name == "postgresql":
            statement = postgresql.insert(table).on_conflict_do_nothing(
                index_elements=conflict_target
            )
        else:
            statement = sqlite.insert(table).on_conflict_do_nothing(index_elements=conflict_target)
        return cls(engine, table_name, statement, tuple(column.name for column in table.columns))

    @classmethod
    def checkpoint_update(cls, engine: Engine) -> _DriverStatement:
        """A request's checkpoint: its served entity and token counts so far."""
        assignments = ", ".join(f"{name} = :{name}" for name in (*_PROGRESS_SET, "updated_at"))
        return cls._on_checkpoints(
            engine,
            f"UPDATE {UsageCheckpoint.__tablename__} SET {assignments} "
            "WHERE databricks_request_id = :databricks_request_id",
            (*_PROGRESS_COLUMNS, "updated_at"),
        )

    @classmethod
    def checkpoint_touch(cls, engine: Engine) -> _DriverStatement:
        return cls._on_checkpoints(
            engine,
            f"UPDATE {UsageCheckpoint.__tablename__} SET updated_at = :updated_at "
            "WHERE databricks_request_id = :databricks_request_id",
            ("databricks_request_id", "updated_at"),
        )

    @classmethod
    def checkpoint_delete(cls, engine: Engine) -> _DriverStatement:
        return cls._on_checkpoints(
            engine,
            f"DELETE FROM {UsageCheckpoint.__tablename__} "
            "WHERE databricks_request_id = :databricks_request_id",
            ("databricks_request_id",),
        )

    @classmethod
    def _on_checkpoints(
        cls, engine: Engine, sql: str, columns: tuple[str, ...]
    ) -> _DriverStatement:
        return cls(engine, UsageCheckpoint.__tablename__, text(sql), columns)

    def run(self, cursor: Any, rows: list[dict[str, Any]]) -> None:
        params = []
        for row in rows:
            values = {name: row[name] for name in self.columns}  # every column, or KeyError
            for name, processor in self._processors:
                values[name] = processor(values[name])
            params.append(values)
        cursor.executemany(self.sql, params)


# What a checkpoint updates: the served entity (a fallback may have taken over since
# admission) and the token counts.
_PROGRESS_SET = (
    "served_entity_id",
    "entity_name",
    "entity_version",
    "model_family",
    "workload_type",
    "input_token_count",
    "output_token_count",
)
_PROGRESS_COLUMNS = ("databricks_request_id", *_PROGRESS_SET)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _first_per_request(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop repeats of a request id within a batch; the first wins, as across batches."""
    unique: dict[str, dict[str, Any]] = {}
    for row in rows:
        unique.setdefault(row["databricks_request_id"], row)
    return list(unique.values())


def _kind_of(error: Exception) -> str:
    """An error's type (the driver's, for a driver error) and SQLSTATE, if any: what a log
    line may say of it."""
    original = error.orig if isinstance(error, DBAPIError) else error
    kind = f"{type(original).__module__}.{type(original).__qualname__}"
    sqlstate = getattr(original, "sqlstate", None)
    return f"{kind}, SQLSTATE {sqlstate}" if sqlstate else kind


def _settle(batch: list[_Pending], error: BaseException | None) -> None:
    for pending in batch:
        if pending.committed is None or pending.committed.done():  # nobody waits (any more)
            continue
        if error is None:
            pending.committed.set_result(None)
        else:
            pending.committed.set_exception(error)
