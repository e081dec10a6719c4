"""The GPU instance catalog, as data: one TOML file per cloud (`aws.toml`, `gcp.toml`,
`azure.toml`, figures documented in `README.md`) of instance types with their GPU part, count
and memory, vCPUs, RAM, regions, on-demand USD/hour (Decimal, with the date and source of the
figure) and the workload types each serves; `instances` types and loads it (lazily),
`gpus` says which GPU parts host which workload type, and `picker` chooses the cheapest
shape of a region that holds a replica on one node, or the one an operator pins, refusing
with a typed `ShapeRefused` that names the reason. Pure: imports neither Ray nor a cloud SDK.
"""

from deploy.catalog.gpus import GpuModel
from deploy.catalog.instances import (
    Catalog,
    CatalogError,
    CloudCatalog,
    InstanceType,
    load_catalog,
    packaged_catalog,
)
from deploy.catalog.picker import (
    Candidate,
    NoShapeFits,
    NotOfferedInRegion,
    PinnedCannotServe,
    ShapeRefused,
    UnknownCloud,
    UnknownInstanceType,
    UnknownRegion,
    UnsupportedWorkload,
    candidates,
    candidates_across,
    pick,
)

__all__ = [
    "Candidate",
    "Catalog",
    "CatalogError",
    "CloudCatalog",
    "GpuModel",
    "InstanceType",
    "NoShapeFits",
    "NotOfferedInRegion",
    "PinnedCannotServe",
    "ShapeRefused",
    "UnknownCloud",
    "UnknownInstanceType",
    "UnknownRegion",
    "UnsupportedWorkload",
    "candidates",
    "candidates_across",
    "load_catalog",
    "packaged_catalog",
    "pick",
]
