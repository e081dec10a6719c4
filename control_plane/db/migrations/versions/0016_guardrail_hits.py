"""Guardrails in usage rows: `endpoint_usage.guardrail_hits`, how many times an endpoint's
input or output guardrails matched (a keyword, a PII value) in the request, and
`guardrail_outcome`, what they did to it (INPUT_BLOCKED, OUTPUT_BLOCKED or MASKED). Both
NULL when no guardrail matched, for rows written before this revision, and for requests
settled from a checkpoint after their process died.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("endpoint_usage") as batch:
        batch.add_column(sa.Column("guardrail_hits", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("guardrail_outcome", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("endpoint_usage") as batch:
        batch.drop_column("guardrail_outcome")
        batch.drop_column("guardrail_hits")
