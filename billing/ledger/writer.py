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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, cast

from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql import ClauseElement

from billing.db import BillingBase
from billing.ledger.models import EndpointUsage, InferenceLog
from billing.ledger.rows import (
    TRUNCATION_MARKER_BYTES,
    InferencePayload,
    UsageRow,
    inference_params,
)

logger = logging.getLogger(__name__)


class LedgerWriteError(Exception):
    """The batch holding this row was not committed; `__cause__` is the database error.
    Recording the same row again is safe (writes are idempotent by request id)."""


class LedgerClosedError(RuntimeError):
    """`record()` was called before `start()`, after `close()`, or after the writer stopped."""


@dataclass(slots=True)
class _Pending:
    usage: dict[str, Any]
    inference: dict[str, Any] | None
    committed: asyncio.Future[None]


class UsageLedger:
    """Group-commit writer of usage rows (and optional payload rows) for one asyncio loop.

    `max_batch` caps the rows per transaction. `max_delay_s` is how long a batch may wait for
    more rows before it is written; the default 0 writes as soon as the previous batch is
    done, which already batches everything that arrived meanwhile. Payload texts are capped
    at `max_payload_bytes` UTF-8 bytes each. Counters for metrics and tests:
    `batches_committed` and `batches_failed` (transactions), `rows_committed` (records
    acknowledged, repeats of a stored request id included).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int = 500,
        max_delay_s: float = 0.0,
        max_payload_bytes: int = 64 * 1024,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_delay_s < 0:
            raise ValueError("max_delay_s must be >= 0")
        if max_payload_bytes < TRUNCATION_MARKER_BYTES:
            raise ValueError(f"max_payload_bytes must be >= {TRUNCATION_MARKER_BYTES}")
        self._engine = engine
        self._max_batch = max_batch
        self._max_delay_s = max_delay_s
        self._max_payload_bytes = max_payload_bytes
        self._usage_insert = _DriverInsert(engine, EndpointUsage.__tablename__)
        self._inference_insert = _DriverInsert(engine, InferenceLog.__tablename__)
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

    def start(self) -> None:
        """Start the writer task on the running event loop."""
        if self._task is not None:
            raise RuntimeError("the usage ledger is already started")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-ledger")

    async def close(self) -> None:
        """Write every row recorded so far, then stop; later `record()` calls fail."""
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
        if self._task is None or self._closing or self._task.done():
            raise LedgerClosedError("the usage ledger is not running")
        pending = _Pending(
            usage.as_params(),
            None
            if inference is None
            else inference_params(usage, inference, self._max_payload_bytes),
            asyncio.get_running_loop().create_future(),
        )
        self._pending.append(pending)
        self._wakeup.set()
        if len(self._pending) >= self._max_batch:
            self._batch_full.set()
        await pending.committed

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

    async def _commit(self, batch: list[_Pending]) -> None:
        self._in_flight = batch
        usage = [pending.usage for pending in batch]
        inference = [pending.inference for pending in batch if pending.inference is not None]
        try:
            await asyncio.to_thread(self._write, usage, inference)
        except Exception as error:
            self.batches_failed += 1
            logger.warning("usage ledger: a batch of %d rows failed: %r", len(batch), error)
            failure = LedgerWriteError(f"the usage batch of {len(batch)} rows was not committed")
            failure.__cause__ = error
            _settle(batch, failure)
        else:
            self.batches_committed += 1
            self.rows_committed += len(batch)
            _settle(batch, None)
        self._in_flight = []

    def _write(self, usage: list[dict[str, Any]], inference: list[dict[str, Any]]) -> None:
        """One transaction, one executemany per table (runs in a worker thread), on the
        writer's own driver connection: no pool checkout and liveness ping per batch. A
        failed batch drops the connection, so the next one starts on a fresh one; a batch
        that failed because the connection had died (a database restart) is retried once on
        a fresh one at once, which the idempotent INSERTs make safe."""
        for attempt in (1, 2):
            if self._connection is None:
                self._connection = self._engine.raw_connection()
            connection = self._connection
            try:
                cursor = connection.cursor()
                try:
                    self._usage_insert.run(cursor, _first_per_request(usage))
                    if inference:
                        self._inference_insert.run(cursor, _first_per_request(inference))
                finally:
                    cursor.close()
                connection.commit()
                return
            except Exception as error:
                self._connection = None
                dead = self._is_disconnect(error, connection)
                with contextlib.suppress(Exception):
                    connection.rollback()
                with contextlib.suppress(Exception):
                    connection.invalidate() if dead else connection.close()
                if attempt == 2 or not dead:
                    raise self._wrapped(error, dead) from error

    def _is_disconnect(self, error: Exception, connection: PoolProxiedConnection) -> bool:
        dialect = self._engine.dialect
        return isinstance(error, dialect.loaded_dbapi.Error) and dialect.is_disconnect(
            error, connection.dbapi_connection, None
        )

    def _wrapped(self, error: Exception, dead: bool) -> Exception:
        """A driver error as SQLAlchemy's `DBAPIError` (as an engine would raise it), its
        text carrying no bound values; any other error as it is."""
        dialect = self._engine.dialect
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


class _DriverInsert:
    """`INSERT ... ON CONFLICT (request id) DO NOTHING` into one ledger table, compiled once
    for the engine's dialect, with every column named; `run` converts each row's values with
    the columns' bind processors and hands the batch to the driver cursor's executemany."""

    def __init__(self, engine: Engine, table_name: str) -> None:
        table = BillingBase.metadata.tables[table_name]
        dialect = engine.dialect
        conflict_target = table.primary_key.columns.values()
        statement: ClauseElement
        if dialect.name == "postgresql":
            statement = postgresql.insert(table).on_conflict_do_nothing(
                index_elements=conflict_target
            )
        elif dialect.name == "sqlite":
            statement = sqlite.insert(table).on_conflict_do_nothing(index_elements=conflict_target)
        else:
            raise ValueError(f"the usage ledger supports SQLite and PostgreSQL, not {dialect.name}")
        # Rows are dicts, so the SQL names its parameters; pysqlite's default is positional.
        named = (
            cast("type[DefaultDialect]", type(dialect))(paramstyle="named")
            if dialect.positional
            else dialect
        )
        self.columns = tuple(column.name for column in table.columns)
        self.sql = str(statement.compile(dialect=named, column_keys=list(self.columns)))
        self._processors: tuple[tuple[str, Callable[[Any], Any]], ...] = tuple(
            (column.name, processor)
            for column in table.columns
            if (processor := column.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        )

    def run(self, cursor: Any, rows: list[dict[str, Any]]) -> None:
        params = []
        for row in rows:
            values = {name: row[name] for name in self.columns}  # every column, or KeyError
            for name, processor in self._processors:
                values[name] = processor(values[name])
            params.append(values)
        cursor.executemany(self.sql, params)


def _first_per_request(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop repeats of a request id within a batch; the first wins, as across batches."""
    unique: dict[str, dict[str, Any]] = {}
    for row in rows:
        unique.setdefault(row["databricks_request_id"], row)
    return list(unique.values())


def _settle(batch: list[_Pending], error: BaseException | None) -> None:
    for pending in batch:
        if pending.committed.done():  # the caller was cancelled
            continue
        if error is None:
            pending.committed.set_result(None)
        else:
            pending.committed.set_exception(error)
