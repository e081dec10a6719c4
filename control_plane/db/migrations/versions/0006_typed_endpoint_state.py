"""Endpoints: `deployments` holds two documents, the observed states of the Serve
applications and the retiring ones (it mixed both shapes in one map), and every endpoint has
a task.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_ENDPOINTS = sa.table(
    "endpoints",
    sa.column("id", sa.String),
    sa.column("task", sa.String),
    sa.column("deployments", sa.JSON),
)


def _split(old: dict[str, Any]) -> dict[str, Any]:
    """{app: state | {"retire_at_ms": t}} -> {"states": {...}, "retiring": {app: t}}."""
    states = {app: v for app, v in old.items() if "retire_at_ms" not in v}
    retiring = {app: v["retire_at_ms"] for app, v in old.items() if "retire_at_ms" in v}
    return {"states": states, "retiring": retiring}


def _merge(new: dict[str, Any]) -> dict[str, Any]:
    old = dict(new.get("states", {}))
    old.update({app: {"retire_at_ms": t} for app, t in new.get("retiring", {}).items()})
    return old


def _rewrite(reshape: Any) -> None:
    connection = op.get_bind()
    rows = connection.execute(sa.select(_ENDPOINTS.c.id, _ENDPOINTS.c.deployments)).all()
    for endpoint_id, deployments in rows:
        if isinstance(deployments, str):  # some drivers hand JSON back as text
            deployments = json.loads(deployments)
        connection.execute(
            _ENDPOINTS.update()
            .where(_ENDPOINTS.c.id == endpoint_id)
            .values(deployments=reshape(deployments or {}))
        )


def upgrade() -> None:
    _rewrite(_split)
    op.execute(_ENDPOINTS.update().where(_ENDPOINTS.c.task.is_(None)).values(task="llm/v1/chat"))
    with op.batch_alter_table("endpoints", schema=None) as batch_op:
        batch_op.alter_column("task", existing_type=sa.String(length=64), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("endpoints", schema=None) as batch_op:
        batch_op.alter_column("task", existing_type=sa.String(length=64), nullable=True)
    _rewrite(_merge)
