"""Identifiers and clocks: one place so tests and code agree on their shapes."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime
from typing import overload


def new_id() -> str:
    """Opaque 32-hex ids for endpoints, tokens and records."""
    return uuid.uuid4().hex


def new_workspace_id() -> str:
    """Databricks workspace ids are decimal numbers, sent as strings."""
    return str(secrets.randbelow(9 * 10**15) + 10**15)


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def to_millis(moment: datetime) -> int: ...
@overload
def to_millis(moment: None) -> None: ...
def to_millis(moment: datetime | None) -> int | None:
    """Databricks timestamps: integer milliseconds since the epoch."""
    if moment is None:
        return None
    if moment.tzinfo is None:  # SQLite hands back naive datetimes; they are stored as UTC
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)
