"""Serving workload types (Databricks names) as data: the devices one replica spans.

The catalog (`deploy.catalog`) maps these to each cloud's instance types; the local
provider runs `CPU` anywhere and GPU types on a Ray cluster that has the GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class WorkloadType:
    name: str
    device: Literal["cpu", "cuda"]
    devices_per_replica: int  # shards of one replica (1 for CPU)
    gpu_model: str | None


WORKLOAD_TYPES: dict[str, WorkloadType] = {
    w.name: w
    for w in (
        WorkloadType("CPU", "cpu", 1, None),
        WorkloadType("GPU_SMALL", "cuda", 1, "T4"),
        WorkloadType("GPU_MEDIUM", "cuda", 1, "A10G"),
        WorkloadType("GPU_LARGE", "cuda", 1, "A100"),
        WorkloadType("MULTIGPU_MEDIUM", "cuda", 4, "A10G"),
        WorkloadType("GPU_MEDIUM_4", "cuda", 4, "A10G"),
        WorkloadType("GPU_MEDIUM_8", "cuda", 8, "A10G"),
        WorkloadType("GPU_LARGE_2", "cuda", 2, "A100"),
        WorkloadType("GPU_LARGE_4", "cuda", 4, "A100"),
        WorkloadType("GPU_LARGE_8", "cuda", 8, "A100"),
        WorkloadType("GPU_XLARGE_8", "cuda", 8, "H100"),
    )
}


def workload_type(name: str) -> WorkloadType:
    try:
        return WORKLOAD_TYPES[name]
    except KeyError:
        choices = ", ".join(WORKLOAD_TYPES)
        raise ValueError(f"unknown workload_type {name!r}; choose one of {choices}") from None
