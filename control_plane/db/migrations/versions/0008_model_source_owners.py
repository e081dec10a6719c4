"""Model sources have an owner: `model_sources` records, per registered checkpoint
directory, the workspace that registered it first, and `model_source_shares` the
workspaces an account admin shared it with. Existing registrations are filled in: each
distinct source is owned by the workspace of its earliest registration. Other workspaces
that had registered the same directory get no share (their registrations stay listed, but
cannot be put in a served entity until an account admin shares the directory); the log
says how many there are.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from persistence.columns import UtcDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")
REGISTERED = sa.table(
    "registered_models",
    sa.column("id", sa.Integer),
    sa.column("workspace_id", sa.String),
    sa.column("source", sa.String),
    sa.column("created_at", UtcDateTime()),
)
SOURCES = sa.table(
    "model_sources",
    sa.column("path_key", sa.String),
    sa.column("path", sa.String),
    sa.column("workspace_id", sa.String),
    sa.column("created_at", UtcDateTime()),
)


def upgrade() -> None:
    op.create_table(
        "model_sources",
        sa.Column("path_key", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=4096), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_model_sources_workspace_id_workspaces"),
        ),
        sa.PrimaryKeyConstraint("path_key", name=op.f("pk_model_sources")),
    )
    op.create_table(
        "model_source_shares",
        sa.Column("path_key", sa.String(length=64), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["path_key"],
            ["model_sources.path_key"],
            name=op.f("fk_model_source_shares_path_key_model_sources"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_model_source_shares_workspace_id_workspaces"),
        ),
        sa.PrimaryKeyConstraint("path_key", "workspace_id", name=op.f("pk_model_source_shares")),
    )
    _fill_owners(op.get_bind())


def _fill_owners(connection: sa.Connection) -> None:
    rows = connection.execute(
        sa.select(REGISTERED.c.workspace_id, REGISTERED.c.source, REGISTERED.c.created_at).order_by(
            REGISTERED.c.created_at, REGISTERED.c.id
        )
    ).all()
    owners: dict[str, str] = {}
    first: dict[str, datetime] = {}
    unshared = 0
    for workspace_id, source, created_at in rows:
        owner = owners.setdefault(source, workspace_id)
        first.setdefault(source, created_at or datetime.now(UTC))
        if owner != workspace_id:
            unshared += 1
    if owners:
        connection.execute(
            SOURCES.insert(),
            [
                {
                    "path_key": hashlib.sha256(source.encode()).hexdigest(),
                    "path": source,
                    "workspace_id": owner,
                    "created_at": first[source],
                }
                for source, owner in owners.items()
            ],
        )
    if unshared:
        log.warning(
            "%d registered models name a checkpoint directory another workspace registered "
            "first; they cannot be served until an account admin shares the directory "
            "(PATCH /api/2.0/models/sources)",
            unshared,
        )


def downgrade() -> None:
    op.drop_table("model_source_shares")
    op.drop_table("model_sources")
