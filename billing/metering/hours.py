"""Hour buckets, in Python and as a SQL expression that runs inside the database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, type_coerce
from sqlalchemy.sql.elements import ColumnElement

from persistence.columns import UtcDateTime

HOUR = timedelta(hours=1)


def hour_floor(moment: datetime) -> datetime:
    """The start of the UTC hour holding `moment` (which must be timezone-aware)."""
    if moment.tzinfo is None:
        raise ValueError(f"{moment.isoformat()} is naive; pass a timezone-aware datetime")
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def sql_hour(column: Any, dialect_name: str) -> ColumnElement[datetime]:
    """`column` (a `UtcDateTime`) truncated to its UTC hour, computed by the database so that
    GROUP BY runs there. PostgreSQL: `date_trunc('hour', column AT TIME ZONE 'UTC')` (not
    the session time zone, which may be +05:30). SQLite stores `UtcDateTime` as
    'YYYY-MM-DD HH:MM:SS.ffffff' in UTC, so `strftime` rewrites the minutes away."""
    if dialect_name == "postgresql":
        truncated = func.date_trunc("hour", func.timezone("UTC", column))
    elif dialect_name == "sqlite":
        truncated = func.strftime("%Y-%m-%d %H:00:00.000000", column)
    else:
        raise ValueError(f"metering supports SQLite and PostgreSQL, not {dialect_name}")
    return type_coerce(truncated, UtcDateTime())
