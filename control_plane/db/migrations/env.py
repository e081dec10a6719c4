"""Alembic environment: runs on the connection `control_plane.db.migrate` hands over."""

from __future__ import annotations

from alembic import context

from billing.schema import METADATA as BILLING_METADATA
from control_plane.db.models import Base

config = context.config
connection = config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=[Base.metadata, BILLING_METADATA],
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
