"""Hour closing and corrections: what to insert so that the stored records of every key say
its correct total. Records are never updated.

For each key of the window, with `measured` its correct totals (`Measure`) and the stored
records of that key:
- no record yet -> one ORIGINAL carrying the total;
- the net of the stored records (the sum of all of them: originals and restatements minus
  retractions) already equals the total -> nothing;
- otherwise -> a RETRACTION (the currently effective record negated, `corrects` = its id) and
  a RESTATEMENT carrying the full new total. A key whose usage vanished (a measure of zero)
  is restated as zero the same way.
"Equals" compares the measured quantities and the rate-card version (`Measure.fingerprint`),
never DBUs, which are a pure function of them.

`record_id` is sha256 of (key, record type, sequence): the ORIGINAL is sequence 0 and the
n-th correction's RETRACTION and RESTATEMENT are sequence n. A rerun over the same state plans
the same ids, and inserts use ON CONFLICT DO NOTHING, so nothing is ever written twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, select

from billing.db import BillingBase
from billing.metering.hours import HOUR
from billing.metering.measures import Measure, Measures, RecordKey
from billing.records import UsageRecord

ORIGINAL, RETRACTION, RESTATEMENT = "ORIGINAL", "RETRACTION", "RESTATEMENT"
USAGE_RECORDS = BillingBase.metadata.tables[UsageRecord.__tablename__]


@dataclass
class StoredKey:
    """The stored records of one key: their net totals and the effective record."""

    records: list[dict[str, Any]] = field(default_factory=list)

    def effective(self) -> dict[str, Any]:
        """The ORIGINAL or RESTATEMENT no RETRACTION has cancelled (the latest one)."""
        cancelled = {r["corrects"] for r in self.records if r["record_type"] == RETRACTION}
        live = [r for r in self.records if r["record_type"] != RETRACTION]
        standing = [r for r in live if r["record_id"] not in cancelled]
        assert len(standing) == 1, f"key has {len(standing)} uncancelled records"
        return standing[0]

    def corrections(self) -> int:
        return sum(1 for r in self.records if r["record_type"] == RESTATEMENT)

    def fingerprint(self) -> tuple[int, int, Decimal, int, str]:
        net = Measure(
            endpoint_name="",
            serving_type="",
            rate_card_version=self.effective()["rate_card_version"],
            input_tokens=sum(r["input_tokens"] for r in self.records),
            output_tokens=sum(r["output_tokens"] for r in self.records),
            chunk_seconds=sum((r["chunk_seconds"] for r in self.records), Decimal(0)),
            launches=sum(r["launches"] for r in self.records),
        )
        return net.fingerprint()


def stored_keys(
    connection: Connection, start: datetime, end: datetime
) -> dict[RecordKey, StoredKey]:
    """The stored records of every key whose hour is in [start, end)."""
    rows = connection.execute(
        select(USAGE_RECORDS).where(
            USAGE_RECORDS.c.usage_start_time >= start, USAGE_RECORDS.c.usage_start_time < end
        )
    )
    stored: dict[RecordKey, StoredKey] = {}
    for row in rows.mappings():
        record = dict(row)
        key = RecordKey(
            record["account_id"],
            record["workspace_id"],
            record["endpoint_id"],
            record["served_entity_name"],
            record["sku_name"],
            record["usage_type"],
            record["usage_start_time"],
        )
        stored.setdefault(key, StoredKey()).records.append(record)
    return stored


def record_id(key: RecordKey, record_type: str, sequence: int) -> str:
    parts = [
        *(str(part or "") for part in key[:-1]),
        key.hour.isoformat(),
        record_type,
        str(sequence),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def plan_records(
    measured: Measures,
    stored: dict[RecordKey, StoredKey],
    *,
    cloud: str | Callable[[str | None], str],
    now: datetime,
    tags: dict[str, dict[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """The records to insert (as `usage_records` rows) so every key's net equals its
    measure; keys in neither map are untouched. Deterministic order: by key."""
    cloud_of = cloud if callable(cloud) else (lambda _workspace: cloud)
    planned: list[dict[str, Any]] = []
    for key in sorted(measured.keys() | stored.keys(), key=_sort_key):
        measure, records = measured.get(key), stored.get(key)
        if records is None:
            assert measure is not None
            custom = (tags or {}).get(key.endpoint_id, {})
            where = cloud_of(key.workspace_id)
            planned.append(_record(key, measure, ORIGINAL, 0, cloud=where, now=now, tags=custom))
            continue
        effective = records.effective()
        if measure is None:
            measure = Measure(
                endpoint_name=effective["usage_metadata"].get("endpoint_name", ""),
                serving_type=effective["product_features"].get("serving_type", ""),
                rate_card_version=effective["rate_card_version"],
            )
        if measure.fingerprint() == records.fingerprint():
            continue
        sequence = records.corrections() + 1
        planned.append(_retraction(key, effective, sequence, now=now))
        custom = (tags or {}).get(key.endpoint_id, {})
        planned.append(
            _record(
                key,
                measure,
                RESTATEMENT,
                sequence,
                cloud=cloud_of(key.workspace_id),
                now=now,
                tags=custom,
            )
        )
    return planned


def _sort_key(key: RecordKey) -> tuple[str, ...]:
    return (key.hour.isoformat(), *(part or "" for part in key[:-1]))


def _record(
    key: RecordKey,
    measure: Measure,
    record_type: str,
    sequence: int,
    *,
    cloud: str,
    now: datetime,
    tags: dict[str, str],
) -> dict[str, Any]:
    return {
        "record_id": record_id(key, record_type, sequence),
        "account_id": key.account_id,
        "workspace_id": key.workspace_id,
        "sku_name": key.sku_name,
        "cloud": cloud,
        "usage_start_time": key.hour,
        "usage_end_time": key.hour + HOUR,
        "usage_date": date(key.hour.year, key.hour.month, key.hour.day),
        "custom_tags": tags,
        "usage_unit": "DBU",
        "usage_quantity": measure.usage_quantity,
        "usage_metadata": {
            "endpoint_name": measure.endpoint_name,
            "endpoint_id": key.endpoint_id,
            "served_entity_name": key.served_entity_name,
        },
        "identity_metadata": {},
        "record_type": record_type,
        "billing_origin_product": "MODEL_SERVING",
        "product_features": {"serving_type": measure.serving_type},
        "usage_type": key.usage_type,
        "endpoint_id": key.endpoint_id,
        "served_entity_name": key.served_entity_name,
        "input_tokens": measure.input_tokens,
        "output_tokens": measure.output_tokens,
        "chunk_seconds": measure.chunk_seconds,
        "launches": measure.launches,
        "rate_card_version": measure.rate_card_version,
        "corrects": None,
        "created_at": now,
    }


def _retraction(
    key: RecordKey, effective: dict[str, Any], sequence: int, *, now: datetime
) -> dict[str, Any]:
    """`effective` negated: every quantity flips sign, everything else is copied."""
    retraction = dict(effective)
    retraction.update(
        record_id=record_id(key, RETRACTION, sequence),
        record_type=RETRACTION,
        usage_quantity=-effective["usage_quantity"],
        input_tokens=-effective["input_tokens"],
        output_tokens=-effective["output_tokens"],
        chunk_seconds=-effective["chunk_seconds"],
        launches=-effective["launches"],
        corrects=effective["record_id"],
        created_at=now,
    )
    return retraction
