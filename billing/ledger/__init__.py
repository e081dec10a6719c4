"""The request-level usage ledger: the `endpoint_usage` table (one row per served request,
shaped like Databricks `system.serving.endpoint_usage`), the optional size-capped
`inference_log` of request/response payloads, and `UsageLedger`, the asyncio group-commit
writer the query gateway awaits before finishing a response. Hourly DBU aggregation reads
`endpoint_usage`; the schema is created by the control plane's Alembic migrations, which
target `billing.db.BillingBase.metadata` alongside the control plane's own."""

from billing.ledger.models import EndpointUsage, InferenceLog
from billing.ledger.rows import TRUNCATION_MARKER, InferencePayload, UsageRow, cap_text
from billing.ledger.writer import LedgerClosedError, LedgerWriteError, UsageLedger

__all__ = [
    "TRUNCATION_MARKER",
    "EndpointUsage",
    "InferenceLog",
    "InferencePayload",
    "LedgerClosedError",
    "LedgerWriteError",
    "UsageLedger",
    "UsageRow",
    "cap_text",
]
