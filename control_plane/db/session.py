"""Database engine and sessions, built from settings (never at import time)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def build_engine(url: str) -> Engine:
    # hide_parameters: a database error's text never carries the bound values (callers'
    # data, several tenants' in one batch) into a log line or an error message.
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_pre_ping=True,
            hide_parameters=True,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url, pool_pre_ping=True, pool_size=10, max_overflow=20, hide_parameters=True
    )


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    # WAL lets the API read while the reconciler writes; foreign keys are off by default.
    # synchronous=NORMAL: in WAL mode a commit survives a crash of the process (kill -9
    # included) and skips the fsync per commit; only a power loss or OS crash may roll back
    # the last commits. Installations that need that too run on PostgreSQL.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
