"""What the gateway hands the ledger for one request: a `UsageRow` (always) and an
`InferencePayload` (when the endpoint logs payloads), validated when built so that a bad row
fails its own request, never the batch it would have been committed with."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from billing.ledger.models import (
    CLIENT_REQUEST_ID_LENGTH,
    ENDPOINT_NAME_LENGTH,
    ID_LENGTH,
    KIND_LENGTH,
    NAME_LENGTH,
    REQUEST_ID_LENGTH,
    VERSION_LENGTH,
)

TRUNCATION_MARKER = "…[truncated]"
TRUNCATION_MARKER_BYTES = len(TRUNCATION_MARKER.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One `endpoint_usage` row; field meanings follow Databricks
    `system.serving.endpoint_usage`. `request_time` must be timezone-aware;
    `workspace_id` is None for account-shared endpoints."""

    databricks_request_id: str
    requester: str
    status_code: int
    request_time: datetime
    served_entity_id: str
    entity_name: str  # the model served, its version and family, and where it ran
    entity_version: str
    model_family: str
    workload_type: str
    endpoint_name: str
    endpoint_id: str
    account_id: str
    input_token_count: int
    output_token_count: int
    request_streaming: bool
    workspace_id: str | None = None
    client_request_id: str | None = None
    usage_context: dict[str, str] | None = field(default=None, hash=False)
    execution_duration_ms: int | None = None
    guardrail_hits: int | None = None  # matches of the endpoint's guardrails; None: none
    guardrail_outcome: str | None = None  # INPUT_BLOCKED, OUTPUT_BLOCKED or MASKED

    def __post_init__(self) -> None:
        _require_text("databricks_request_id", self.databricks_request_id, REQUEST_ID_LENGTH)
        _require_text("requester", self.requester, NAME_LENGTH)
        _require_text("served_entity_id", self.served_entity_id, NAME_LENGTH)
        _require_text("entity_name", self.entity_name, NAME_LENGTH)
        _require_text("entity_version", self.entity_version, VERSION_LENGTH)
        _require_text("model_family", self.model_family, KIND_LENGTH)
        _require_text("workload_type", self.workload_type, KIND_LENGTH)
        _require_text("endpoint_name", self.endpoint_name, ENDPOINT_NAME_LENGTH)
        _require_text("endpoint_id", self.endpoint_id, ID_LENGTH)
        _require_text("account_id", self.account_id, ID_LENGTH)
        if self.workspace_id is not None:
            _require_text("workspace_id", self.workspace_id, ID_LENGTH)
        if self.client_request_id is not None:
            _require_text("client_request_id", self.client_request_id, CLIENT_REQUEST_ID_LENGTH)
        if self.request_time.tzinfo is None:
            raise ValueError("request_time must be timezone-aware (UTC)")
        if not 100 <= self.status_code <= 599:
            raise ValueError(f"status_code {self.status_code} is not an HTTP status")
        if self.execution_duration_ms is not None and self.execution_duration_ms < 0:
            raise ValueError("execution_duration_ms must be >= 0")
        if self.guardrail_hits is not None and self.guardrail_hits < 1:
            raise ValueError("guardrail_hits must be >= 1 (None when no guardrail matched)")
        if self.guardrail_outcome is not None:
            _require_text("guardrail_outcome", self.guardrail_outcome, 16)
        for name in ("input_token_count", "output_token_count"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")

    def as_params(self) -> dict[str, Any]:
        """The row as `endpoint_usage` insert parameters (a shallow copy: no deep copies on
        the hot path)."""
        return {name: getattr(self, name) for name in _USAGE_COLUMNS}


_USAGE_COLUMNS = tuple(f.name for f in fields(UsageRow))


@dataclass(frozen=True, slots=True)
class InferencePayload:
    """The request and response text of one request (e.g. the JSON bodies; for a stream,
    the assembled output). `response` is None when the request produced none (cancelled)."""

    request: str
    response: str | None = None


def cap_text(text: str, max_bytes: int) -> tuple[str, bool]:
    """`text` cut to at most `max_bytes` UTF-8 bytes, marker included, and whether it was cut.

    The cut never splits a character. NUL (which PostgreSQL text cannot hold) and lone
    surrogates (which UTF-8 cannot encode) are replaced, so one odd payload cannot fail a
    batch.
    """
    if max_bytes < TRUNCATION_MARKER_BYTES:
        raise ValueError(f"max_bytes must be >= {TRUNCATION_MARKER_BYTES}")
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        encoded = text.encode("utf-8", errors="replace")
        text = encoded.decode("utf-8")
    if len(encoded) <= max_bytes:
        return text, False
    kept = encoded[: max_bytes - TRUNCATION_MARKER_BYTES].decode("utf-8", errors="ignore")
    return kept + TRUNCATION_MARKER, True


def inference_params(
    usage: UsageRow, payload: InferencePayload, max_payload_bytes: int
) -> dict[str, Any]:
    """The `inference_log` insert parameters for `payload`, each text capped by `cap_text`."""
    request, request_truncated = cap_text(payload.request, max_payload_bytes)
    response, response_truncated = (
        (None, False) if payload.response is None else cap_text(payload.response, max_payload_bytes)
    )
    return {
        "databricks_request_id": usage.databricks_request_id,
        "endpoint_id": usage.endpoint_id,
        "endpoint_name": usage.endpoint_name,
        "served_entity_id": usage.served_entity_id,
        "request_time": usage.request_time,
        "status_code": usage.status_code,
        "request": request,
        "response": response,
        "request_truncated": request_truncated,
        "response_truncated": response_truncated,
    }


def _require_text(name: str, value: str, max_length: int) -> None:
    if not value:
        raise ValueError(f"{name} must not be empty")
    if len(value) > max_length:
        raise ValueError(f"{name} is longer than {max_length} characters")
