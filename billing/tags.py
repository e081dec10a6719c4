"""Each endpoint's custom tags, as billing copies them into its records' `custom_tags`.

The control plane writes an endpoint's tags here, in the transaction that sets them (create,
tag changes, bootstrap), so metering reads them without asking the control plane. Rows
outlive their endpoint: usage metered after a delete still carries the tags it had.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import JSON, Connection, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from billing.db import BillingBase


class EndpointTags(BillingBase):
    __tablename__ = "endpoint_tags"

    endpoint_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tags: Mapped[dict[str, str]] = mapped_column(JSON)
    updated_at: Mapped[datetime]


def record_tags(session: Session, endpoint_id: str, tags: dict[str, str], now: datetime) -> None:
    """Set the endpoint's tags (in the caller's transaction)."""
    row = session.get(EndpointTags, endpoint_id)
    if row is None:
        session.add(EndpointTags(endpoint_id=endpoint_id, tags=tags, updated_at=now))
    else:
        row.tags, row.updated_at = tags, now


def tags_of(connection: Connection, endpoint_ids: Collection[str]) -> dict[str, dict[str, str]]:
    """The tags of each endpoint (endpoints with none are absent)."""
    table = EndpointTags.__table__
    rows = connection.execute(
        select(table.c.endpoint_id, table.c.tags).where(table.c.endpoint_id.in_(endpoint_ids))
    )
    return {endpoint_id: dict(tags) for endpoint_id, tags in rows}
