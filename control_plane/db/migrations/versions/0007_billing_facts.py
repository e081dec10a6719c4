"""Billing facts at the source: usage rows carry their model (entity name, version, family)
and workload type, capacity intervals their model family, and billing keeps each endpoint's
tags (`endpoint_tags`), so metering reads nothing of the control plane. Existing rows are
filled in from the capacity timeline, the model registry and the presets.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

from persistence.columns import UtcDateTime
from workers.model.presets import PRESETS

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")
PRESET_VERSION = "1"
_USAGE_COLUMNS = (
    ("entity_name", 255),
    ("entity_version", 64),
    ("model_family", 32),
    ("workload_type", 32),
)
USAGE = sa.table(
    "endpoint_usage",
    sa.column("endpoint_id", sa.String),
    sa.column("served_entity_id", sa.String),
    sa.column("request_time", UtcDateTime()),
    *(sa.column(name, sa.String) for name, _ in _USAGE_COLUMNS),
)
CAPACITY = sa.table(
    "capacity_timeline",
    sa.column("id", sa.Integer),
    sa.column("endpoint_id", sa.String),
    sa.column("workspace_id", sa.String),
    sa.column("served_entity_name", sa.String),
    sa.column("entity_name", sa.String),
    sa.column("entity_version", sa.String),
    sa.column("model_family", sa.String),
    sa.column("workload_type", sa.String),
    sa.column("started_at", UtcDateTime()),
)


def upgrade() -> None:
    with op.batch_alter_table("endpoint_usage", schema=None) as batch_op:
        for name, length in _USAGE_COLUMNS:
            batch_op.add_column(sa.Column(name, sa.String(length=length), nullable=True))
    with op.batch_alter_table("capacity_timeline", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model_family", sa.String(length=32), nullable=True))
    op.create_table(
        "endpoint_tags",
        sa.Column("endpoint_id", sa.String(length=32), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("updated_at", UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("endpoint_id", name=op.f("pk_endpoint_tags")),
    )
    connection = op.get_bind()
    _fill_families(connection)
    _fill_usage(connection)
    _copy_tags(connection)
    with op.batch_alter_table("endpoint_usage", schema=None) as batch_op:
        for name, length in _USAGE_COLUMNS:
            batch_op.alter_column(name, existing_type=sa.String(length=length), nullable=False)
    with op.batch_alter_table("capacity_timeline", schema=None) as batch_op:
        batch_op.alter_column("model_family", existing_type=sa.String(length=32), nullable=False)


def downgrade() -> None:
    op.drop_table("endpoint_tags")
    with op.batch_alter_table("capacity_timeline", schema=None) as batch_op:
        batch_op.drop_column("model_family")
    with op.batch_alter_table("endpoint_usage", schema=None) as batch_op:
        for name, _ in reversed(_USAGE_COLUMNS):
            batch_op.drop_column(name)


def _fill_families(connection: sa.Connection) -> None:
    """Each interval's model family: its workspace's registered model, else the preset."""
    registered = {
        (workspace, name, version): family
        for workspace, name, version, family in connection.execute(
            sa.text("SELECT workspace_id, name, version, model_type FROM registered_models")
        )
    }
    rows = connection.execute(
        sa.select(
            CAPACITY.c.id,
            CAPACITY.c.workspace_id,
            CAPACITY.c.entity_name,
            CAPACITY.c.entity_version,
        )
    ).all()
    for interval_id, workspace, name, version in rows:
        family = registered.get((workspace, name, version)) or _preset_family(name, version)
        connection.execute(
            CAPACITY.update().where(CAPACITY.c.id == interval_id).values(model_family=family)
        )


def _preset_family(name: str, version: str) -> str:
    preset = PRESETS.get(name)
    if preset is None or version != PRESET_VERSION:
        return "unknown"
    return preset.args.family


def _fill_usage(connection: sa.Connection) -> None:
    """A row's model is what the interval of its served entity that had started by the row's
    request time served (the earliest interval also covers rows before it)."""
    by_entity: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for interval in connection.execute(
        sa.select(CAPACITY).order_by(CAPACITY.c.started_at, CAPACITY.c.id)
    ):
        by_entity[(interval.endpoint_id, interval.served_entity_name)].append(interval)
    for (endpoint_id, served), intervals in by_entity.items():
        for index, interval in enumerate(intervals):
            where = [
                USAGE.c.endpoint_id == endpoint_id,
                USAGE.c.served_entity_id == served,
                USAGE.c.entity_name.is_(None),
            ]
            if index + 1 < len(intervals):
                where.append(USAGE.c.request_time < intervals[index + 1].started_at)
            connection.execute(
                USAGE.update()
                .where(*where)
                .values(
                    entity_name=interval.entity_name,
                    entity_version=interval.entity_version,
                    model_family=interval.model_family,
                    workload_type=interval.workload_type,
                )
            )
    orphans = connection.execute(
        USAGE.update()
        .where(USAGE.c.entity_name.is_(None))
        .values(
            entity_name=USAGE.c.served_entity_id,
            entity_version="",
            model_family="unknown",
            workload_type="",
        )
    ).rowcount
    if orphans:
        log.warning("%d usage rows have no capacity interval: model family 'unknown'", orphans)


def _copy_tags(connection: sa.Connection) -> None:
    now = datetime.now(UTC)
    table = sa.table(
        "endpoint_tags",
        sa.column("endpoint_id", sa.String),
        sa.column("tags", sa.JSON),
        sa.column("updated_at", UtcDateTime()),
    )
    for endpoint_id, tags in connection.execute(sa.text("SELECT id, tags FROM endpoints")):
        if isinstance(tags, str):  # some drivers hand JSON back as text
            tags = json.loads(tags)
        if tags:
            mapped = {tag["key"]: tag.get("value") or "" for tag in tags}
            connection.execute(
                table.insert().values(endpoint_id=endpoint_id, tags=mapped, updated_at=now)
            )
