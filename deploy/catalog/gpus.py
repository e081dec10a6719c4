"""GPU models the catalog names, and which of them each serving workload type may run on.

A workload type (`deploy.workload_types`) names a GPU class by its Databricks reference part
(`A10G`, `A100`, `H100`, `T4`); a cloud offers that class under other parts too. The class
fixes the memory a replica's shards were sized for, so a part only counts if it has the same
memory per GPU:

- `T4`: T4 16 GB.
- `A10G`: the 24 GB inference parts: A10G (AWS g5), A10 (Azure NVadsA10 v5), L4 (AWS g6,
  GCP g2). An L4 has about half an A10G's memory bandwidth: same fit, slower decode; pin a
  g5 shape where that matters.
- `A100`: A100 80 GB only (SXM or PCIe). The 40 GB parts (p4d, a2-highgpu, ND96asr_v4) are
  catalogued but serve no shipped workload type: a replica sized for 80 GB per shard may not
  fit in 40.
- `H100`: H100 80 GB.
"""

from __future__ import annotations

from enum import StrEnum

from deploy.workload_types import WorkloadType


class GpuModel(StrEnum):
    T4 = "T4"
    A10G = "A10G"
    A10 = "A10"
    L4 = "L4"
    A100_40GB = "A100-40GB"
    A100_80GB = "A100-80GB"
    H100_80GB = "H100-80GB"


# Memory per GPU as the providers list it (nominal GB; AWS and Azure print it as GiB).
NOMINAL_MEMORY_GIB: dict[GpuModel, int] = {
    GpuModel.T4: 16,
    GpuModel.A10G: 24,
    GpuModel.A10: 24,
    GpuModel.L4: 24,
    GpuModel.A100_40GB: 40,
    GpuModel.A100_80GB: 80,
    GpuModel.H100_80GB: 80,
}

# A workload type's `gpu_model` (its GPU class) -> the parts that may host it.
GPU_CLASS_MODELS: dict[str, frozenset[GpuModel]] = {
    "T4": frozenset({GpuModel.T4}),
    "A10G": frozenset({GpuModel.A10G, GpuModel.A10, GpuModel.L4}),
    "A100": frozenset({GpuModel.A100_80GB}),
    "H100": frozenset({GpuModel.H100_80GB}),
}


def allowed_models(workload: WorkloadType) -> frozenset[GpuModel]:
    """The GPU parts that may host `workload` (empty for CPU or an unmapped class)."""
    if workload.gpu_model is None:
        return frozenset()
    return GPU_CLASS_MODELS.get(workload.gpu_model, frozenset())


def why_cannot_host(
    workload: WorkloadType, gpu_model: GpuModel, gpu_count: int, gpus_needed: int | None = None
) -> str | None:
    """None when a node of `gpu_count` × `gpu_model` can host one replica of `workload`
    (needing `gpus_needed` GPUs, default the workload's devices per replica); otherwise the
    reason, phrased to follow "it " in an error message."""
    needed = workload.devices_per_replica if gpus_needed is None else gpus_needed
    models = allowed_models(workload)
    if gpu_model not in models:
        parts = ", ".join(sorted(models)) or "none"
        return f"has {gpu_model} GPUs; {workload.name} runs on {parts}"
    if gpu_count < needed:
        return f"has {gpu_count} GPU(s) on one node; {workload.name} needs {needed}"
    return None
