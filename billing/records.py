"""Hourly usage records, shaped like Databricks `system.billing.usage`.

Records are immutable: metering only ever inserts. A correction of an hour that already has
records is a RETRACTION (the negated quantity of the record it cancels, `corrects` pointing
at it) plus a RESTATEMENT carrying the corrected full quantity; the sum of every record of a
key is always the right total. `record_id` is derived from the record's identity (its key,
hour, type and sequence), so a rerun of a metering job inserts nothing twice.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Date, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from billing.db import BillingBase, Dbu

RECORD_TYPES = ("ORIGINAL", "RETRACTION", "RESTATEMENT")


USAGE_TYPES = ("TOKEN", "GPU_TIME", "COMPUTE_TIME")


class UsageRecord(BillingBase):
    __tablename__ = "usage_records"

    record_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(32))
    workspace_id: Mapped[str | None] = mapped_column(String(32))
    sku_name: Mapped[str] = mapped_column(String(128))
    cloud: Mapped[str] = mapped_column(String(16))
    usage_start_time: Mapped[datetime]
    usage_end_time: Mapped[datetime]
    usage_date: Mapped[date] = mapped_column(Date)
    custom_tags: Mapped[dict[str, Any]]  # the endpoint's tags, key -> value
    usage_unit: Mapped[str] = mapped_column(String(8), default="DBU")
    usage_quantity: Mapped[Dbu]
    usage_metadata: Mapped[dict[str, Any]]  # endpoint_name, endpoint_id, served_entity_name
    identity_metadata: Mapped[dict[str, Any]]
    record_type: Mapped[str] = mapped_column(String(16))  # ORIGINAL | RETRACTION | RESTATEMENT
    billing_origin_product: Mapped[str] = mapped_column(String(32), default="MODEL_SERVING")
    product_features: Mapped[dict[str, Any]]  # {"serving_type": FOUNDATION_MODEL | ...}
    usage_type: Mapped[str] = mapped_column(String(16))  # TOKEN | GPU_TIME | COMPUTE_TIME
    # Not in system.billing.usage; kept so every DBU traces back to what it measured.
    endpoint_id: Mapped[str] = mapped_column(String(32))
    served_entity_name: Mapped[str] = mapped_column(String(255))
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    # provisioned capacity: chunks x seconds held
    chunk_seconds: Mapped[Dbu] = mapped_column(default=Decimal(0))
    launches: Mapped[int] = mapped_column(Integer, default=0)  # wakes from zero
    rate_card_version: Mapped[str] = mapped_column(String(64))
    corrects: Mapped[str | None] = mapped_column(String(64))  # the record a correction cancels
    created_at: Mapped[datetime]

    __table_args__ = (
        Index("ix_usage_records_workspace_id_usage_start_time", "workspace_id", "usage_start_time"),
        Index("ix_usage_records_endpoint_id_usage_start_time", "endpoint_id", "usage_start_time"),
        Index("ix_usage_records_usage_start_time", "usage_start_time"),
    )
