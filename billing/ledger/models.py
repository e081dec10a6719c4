"""The ledger's tables: one row per request (`endpoint_usage`, shaped like Databricks
`system.serving.endpoint_usage`), an optional, size-capped payload log (`inference_log`), and
the requests still in flight (`usage_checkpoints`), each with the usage delivered so far.

Billing owns these tables and its own declarative base, so it never imports `control_plane`;
the control plane's Alembic environment targets both metadatas.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from billing.db import BillingBase

# Column widths, shared with the row validation in `billing.ledger.rows` so that a row that
# would not fit is rejected for its own request instead of failing a whole batch.
REQUEST_ID_LENGTH = 64
CLIENT_REQUEST_ID_LENGTH = 256
ID_LENGTH = 32  # account, workspace and endpoint ids (control-plane ids)
ENDPOINT_NAME_LENGTH = 63
NAME_LENGTH = 255  # principal names, served entity names, model names
VERSION_LENGTH = 64
KIND_LENGTH = 32  # model families, workload types
OWNER_LENGTH = 32  # the id of the ledger (one per process start) that admitted a request


class EndpointUsage(BillingBase):
    """One row per served request, written once when the request completes (or fails).

    `databricks_request_id` is the server-chosen request id and the idempotency key: writing
    the same id twice keeps the first row. `workspace_id` is the caller's (the tenant billed,
    also on account-shared endpoints). Hourly billing aggregates by `request_time`, per
    endpoint. The row carries what prices it — the model (`entity_name`, `entity_version`),
    its `model_family` (the rate card's key) and the `workload_type` it ran on — as the
    gateway knew them, so metering needs nothing but this table.
    """

    __tablename__ = "endpoint_usage"

    databricks_request_id: Mapped[str] = mapped_column(String(REQUEST_ID_LENGTH), primary_key=True)
    client_request_id: Mapped[str | None] = mapped_column(String(CLIENT_REQUEST_ID_LENGTH))
    requester: Mapped[str] = mapped_column(String(NAME_LENGTH))
    status_code: Mapped[int] = mapped_column(Integer)
    request_time: Mapped[datetime] = mapped_column(index=True)
    served_entity_id: Mapped[str] = mapped_column(String(NAME_LENGTH))
    entity_name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    entity_version: Mapped[str] = mapped_column(String(VERSION_LENGTH))
    model_family: Mapped[str] = mapped_column(String(KIND_LENGTH))
    workload_type: Mapped[str] = mapped_column(String(KIND_LENGTH))
    endpoint_name: Mapped[str] = mapped_column(String(ENDPOINT_NAME_LENGTH))
    endpoint_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    workspace_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    account_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    input_token_count: Mapped[int] = mapped_column(Integer)
    output_token_count: Mapped[int] = mapped_column(Integer)
    request_streaming: Mapped[bool] = mapped_column(Boolean)
    usage_context: Mapped[dict[str, str] | None]
    # Admission to the final byte, in ms; NULL for a request settled from a checkpoint
    # after its process died (how long it ran is unknown).
    execution_duration_ms: Mapped[int | None] = mapped_column(Integer)
    # The endpoint's guardrails on this request: how many matches, and what they did
    # (`GuardrailOutcome`); NULL when none matched.
    guardrail_hits: Mapped[int | None] = mapped_column(Integer)
    guardrail_outcome: Mapped[str | None] = mapped_column(String(16))

    __table_args__ = (
        Index("ix_endpoint_usage_endpoint_id_request_time", "endpoint_id", "request_time"),
    )


class InferenceLog(BillingBase):
    """The request and response text of a request, each capped to a configured number of
    UTF-8 bytes by the writer; the `*_truncated` flags say whether the cap cut it."""

    __tablename__ = "inference_log"

    databricks_request_id: Mapped[str] = mapped_column(String(REQUEST_ID_LENGTH), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    endpoint_name: Mapped[str] = mapped_column(String(ENDPOINT_NAME_LENGTH))
    served_entity_id: Mapped[str] = mapped_column(String(NAME_LENGTH))
    request_time: Mapped[datetime]
    status_code: Mapped[int] = mapped_column(Integer)
    request: Mapped[str] = mapped_column(Text)
    response: Mapped[str | None] = mapped_column(Text)
    request_truncated: Mapped[bool] = mapped_column(Boolean)
    response_truncated: Mapped[bool] = mapped_column(Boolean)

    __table_args__ = (
        Index("ix_inference_log_endpoint_id_request_time", "endpoint_id", "request_time"),
    )


class UsageCheckpoint(BillingBase):
    """An accepted request that has not ended yet: what its `endpoint_usage` row will say
    (every column but `status_code`), with the tokens delivered so far.

    Written at admission and updated while the request streams (its checkpoints); deleted
    in the transaction that inserts the request's `endpoint_usage` row. A row left behind
    belongs to a process that died: once `updated_at` is older than the stale bound (a live
    process refreshes its rows' `updated_at` well within it), `settle_interrupted` turns it
    into an `endpoint_usage` row with status `INTERRUPTED_STATUS` and deletes it, in one
    transaction. `owner` names the process that admitted the request (for operators; the
    stale bound alone decides). No secondary index: the table holds only requests in flight,
    and an unindexed `updated_at` keeps PostgreSQL's frequent checkpoint updates HOT.
    """

    __tablename__ = "usage_checkpoints"

    databricks_request_id: Mapped[str] = mapped_column(String(REQUEST_ID_LENGTH), primary_key=True)
    client_request_id: Mapped[str | None] = mapped_column(String(CLIENT_REQUEST_ID_LENGTH))
    requester: Mapped[str] = mapped_column(String(NAME_LENGTH))
    request_time: Mapped[datetime]
    served_entity_id: Mapped[str] = mapped_column(String(NAME_LENGTH))
    entity_name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    entity_version: Mapped[str] = mapped_column(String(VERSION_LENGTH))
    model_family: Mapped[str] = mapped_column(String(KIND_LENGTH))
    workload_type: Mapped[str] = mapped_column(String(KIND_LENGTH))
    endpoint_name: Mapped[str] = mapped_column(String(ENDPOINT_NAME_LENGTH))
    endpoint_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    workspace_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    account_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    input_token_count: Mapped[int] = mapped_column(Integer)
    output_token_count: Mapped[int] = mapped_column(Integer)
    request_streaming: Mapped[bool] = mapped_column(Boolean)
    usage_context: Mapped[dict[str, str] | None]
    owner: Mapped[str] = mapped_column(String(OWNER_LENGTH))
    updated_at: Mapped[datetime]
