"""The request-level usage ledger: the `endpoint_usage` table (one row per served request,
shaped like Databricks `system.serving.endpoint_usage`), the optional size-capped
`inference_log` of request/response payloads, the `usage_checkpoints` of requests in flight
(settled as interrupted when their process died: `checkpoints`), and `UsageLedger`, the
asyncio group-commit writer the query gateway awaits before finishing a response and feeds
checkpoints while a response streams. Hourly DBU aggregation reads
`endpoint_usage`; the schema is created by the control plane's Alembic migrations, which
target `billing.db.BillingBase.metadata` alongside the control plane's own."""

from billing.ledger.checkpoints import INTERRUPTED_STATUS, settle_interrupted
from billing.ledger.models import EndpointUsage, InferenceLog, UsageCheckpoint
from billing.ledger.rows import TRUNCATION_MARKER, InferencePayload, UsageRow, cap_text
from billing.ledger.writer import LedgerClosedError, LedgerWriteError, UsageLedger

__all__ = [
    "INTERRUPTED_STATUS",
    "TRUNCATION_MARKER",
    "EndpointUsage",
    "InferenceLog",
    "InferencePayload",
    "LedgerClosedError",
    "LedgerWriteError",
    "UsageCheckpoint",
    "UsageLedger",
    "UsageRow",
    "cap_text",
    "settle_interrupted",
]
