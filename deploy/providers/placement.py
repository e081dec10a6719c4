"""Where a served entity's replicas run when its workspace lives in a cloud: the cloud, the
regions to try in order (the workspace's region first, then the entity's fallbacks), the
workload type, and optionally the instance types an operator pinned, in the order to try.

A `Placement` travels with the `AppSpec` (and with each `ReplicaGroup` of a capacity
question) from the control plane to the provider; `candidates()` turns it into the shapes
a node group fails over through, and refuses, before any cloud call, a request the catalog
cannot serve (`deploy.catalog.ShapeRefused`, a `ValueError` the API answers with a 400).
Pure: no Ray, no cloud SDK.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from deploy.catalog import Candidate, ShapeRefused, candidates_across

Cloud = Literal["aws", "gcp", "azure"]
MAX_FALLBACKS = 8  # regions or pinned shapes an entity may list


class Placement(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    cloud: Cloud
    regions: tuple[str, ...] = Field(
        min_length=1, max_length=1 + MAX_FALLBACKS, description="the workspace's, then fallbacks"
    )
    workload_type: str
    instance_types: tuple[str, ...] = Field(
        default=(), max_length=MAX_FALLBACKS, description="pinned shapes in order; () cheapest"
    )
    endpoint_id: str = Field(min_length=1)
    served_entity: str = Field(min_length=1)

    def candidates(self) -> tuple[Candidate, ...]:
        """The shapes to try, in order: region by region (the workspace's first), within a
        region the pinned types in their order, or every fitting type cheapest first.
        Raises `ShapeRefused` naming why when none is left."""
        if not self.instance_types:
            return candidates_across(self.cloud, self.regions, self.workload_type)
        found: list[Candidate] = []
        refusals: list[str] = []
        for pinned in self.instance_types:
            try:
                found += candidates_across(
                    self.cloud, self.regions, self.workload_type, pinned=pinned
                )
            except ShapeRefused as exc:
                refusals.append(str(exc))
        if refusals and not found:
            raise ShapeRefused("; ".join(refusals))
        order = {region: i for i, region in enumerate(self.regions)}
        return tuple(sorted(found, key=lambda c: order[c.region]))  # stable: pin order kept
