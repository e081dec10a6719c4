"""What one hourly record measures: its identity (`RecordKey`) and its totals (`Measure`).

A record key is (account, workspace, endpoint, served entity, SKU, usage type, hour). The
totals are the measured quantities (tokens, chunk-seconds, GPU replica-seconds, launches) and
the DBUs they cost on the rate card in effect at the hour's start.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

MICROSECOND = Decimal("0.000001")

TOKEN = "TOKEN"
COMPUTE_TIME = "COMPUTE_TIME"  # provisioned throughput (chunk-hours) and its LAUNCH SKU
GPU_TIME = "GPU_TIME"  # custom models on GPU workload types (replica-hours)
FOUNDATION_MODEL = "FOUNDATION_MODEL"
GPU_MODEL = "GPU_MODEL"


class RecordKey(NamedTuple):
    account_id: str
    workspace_id: str | None
    endpoint_id: str
    served_entity_name: str
    sku_name: str
    usage_type: str
    hour: datetime  # UTC hour start


@dataclass(frozen=True)
class Measure:
    """The correct totals of one key. `chunk_seconds` holds provisioned chunk-seconds for
    COMPUTE_TIME and replica-seconds for GPU_TIME (both exact to the microsecond)."""

    endpoint_name: str
    serving_type: str
    rate_card_version: str
    usage_quantity: Decimal = Decimal(0)
    input_tokens: int = 0
    output_tokens: int = 0
    chunk_seconds: Decimal = Decimal(0)
    launches: int = 0

    def plus(self, other: Measure) -> Measure:
        """Both measures of the same key added (names and version from `self`)."""
        return Measure(
            endpoint_name=self.endpoint_name,
            serving_type=self.serving_type,
            rate_card_version=self.rate_card_version,
            usage_quantity=self.usage_quantity + other.usage_quantity,
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            chunk_seconds=self.chunk_seconds + other.chunk_seconds,
            launches=self.launches + other.launches,
        )

    def fingerprint(self) -> tuple[int, int, Decimal, int, str]:
        """What decides whether a stored total is still right. The DBUs are a pure function
        of these quantities and the rate-card version (versions are never edited), so
        comparing them is exact on every backend, whatever scale it stores DBUs at."""
        return (
            self.input_tokens,
            self.output_tokens,
            self.chunk_seconds.quantize(MICROSECOND),
            self.launches,
            self.rate_card_version,
        )


Measures = dict[RecordKey, Measure]


def add(measures: Measures, key: RecordKey, measure: Measure) -> None:
    """Accumulate `measure` into `measures[key]`."""
    current = measures.get(key)
    measures[key] = measure if current is None else current.plus(measure)
