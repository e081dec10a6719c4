"""Metering: the usage ledger (`endpoint_usage`) and the capacity timeline
(`capacity_timeline`) turned into hourly `usage_records` shaped like Databricks
`system.billing.usage` — TOKEN records for pay-per-token traffic (`tokens`), COMPUTE_TIME
records for provisioned throughput plus LAUNCH-SKU records for wakes from zero, and GPU_TIME
records for custom models (`capacity`). `run_metering` (`job`) stores closed hours, once, and
corrects them with RETRACTION + RESTATEMENT pairs when late usage arrives (`corrections`);
`live_records` (`live`) computes the hours not stored yet for the usage listing. Everything
takes the time as an argument; `MeteringContext` names the installation's cloud, region,
tier and rate cards. Metering reads billing's own tables only.
"""

from billing.metering.context import MeteringContext
from billing.metering.job import DEFAULT_GRACE, DEFAULT_LOOKBACK, MeteringReport, run_metering
from billing.metering.live import LIVE_PREFIX, UsageFilters, live_records

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_LOOKBACK",
    "LIVE_PREFIX",
    "MeteringContext",
    "MeteringReport",
    "UsageFilters",
    "live_records",
    "run_metering",
]
