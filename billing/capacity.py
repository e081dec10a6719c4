"""The capacity timeline: what each served entity held, and when — the input of
provisioned-throughput and GPU-time metering.

One row per period during which a served entity held a given capacity. The control plane's
reconciler appends rows (a change closes the open row with `ended_at` and opens a new one);
rows are never edited otherwise. A scale-to-zero entity that parks opens a `parked` row
(billed nothing) and one that wakes opens a row with `woke_from_zero` (billed a LAUNCH
record). Kept after the endpoint is deleted (no foreign key), so its history stays billable.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Integer, String, false
from sqlalchemy.orm import Mapped, mapped_column

from billing.db import BillingBase


class CapacityInterval(BillingBase):
    __tablename__ = "capacity_timeline"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    endpoint_id: Mapped[str] = mapped_column(String(32), index=True)
    account_id: Mapped[str] = mapped_column(String(32))
    workspace_id: Mapped[str | None] = mapped_column(String(32))
    endpoint_name: Mapped[str] = mapped_column(String(63))
    served_entity_name: Mapped[str] = mapped_column(String(255))
    entity_name: Mapped[str] = mapped_column(String(255))
    entity_version: Mapped[str] = mapped_column(String(64))
    model_family: Mapped[str] = mapped_column(String(32))  # the rate card's key
    workload_type: Mapped[str] = mapped_column(String(32))
    workload_size: Mapped[str | None] = mapped_column(String(16))
    min_replicas: Mapped[int] = mapped_column(Integer)
    max_replicas: Mapped[int] = mapped_column(Integer)
    gpus_per_replica: Mapped[int] = mapped_column(Integer)
    provisioned_chunks: Mapped[int] = mapped_column(Integer, default=0)
    scale_to_zero_enabled: Mapped[bool] = mapped_column(Boolean)
    parked: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    woke_from_zero: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
