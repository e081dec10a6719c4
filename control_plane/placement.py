"""Where a workspace lives (cloud and region) and, from that, where each of its served
entities runs: a `deploy.providers.placement.Placement` for a cloud workspace, None for a
`local` one (the Ray cluster as it is).

A workspace's cloud and region are chosen when it is created (default: the installation's
`cloud` and `billing.region`) and never change: its usage is billed under that region's
SKUs, and its endpoints' node groups run there (then in the fallback regions an entity
lists). A cloud must be configured under `clouds` before a workspace can live in it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from billing.placements import resolve_placement
from billing.settings import DEFAULT_REGIONS, Cloud
from billing.skus import REGIONS
from control_plane.endpoints.config import ServedEntity
from control_plane.errors import InvalidParameter
from control_plane.settings import Settings
from deploy.providers.placement import Placement


class WorkspacePlacement(BaseModel):
    model_config = ConfigDict(frozen=True)

    cloud: Cloud
    region: str

    def of(self, entity: ServedEntity, endpoint_id: str) -> Placement | None:
        """Where `entity` of endpoint `endpoint_id` runs; None in a local workspace."""
        if self.cloud == "local":
            return None
        extra = entity.placement
        return Placement(
            cloud=self.cloud,
            regions=tuple(dict.fromkeys((self.region, *(extra.fallback_regions if extra else ())))),
            workload_type=entity.workload_type,
            instance_types=extra.instance_types if extra else (),
            endpoint_id=endpoint_id,
            served_entity=entity.name,
        )


def stored_placement(
    cloud: str | None, region: str | None, settings: Settings
) -> WorkspacePlacement:
    """A workspace row's placement; NULL columns mean the installation's (billing's rule)."""
    chosen, where = resolve_placement(cloud, region, settings.cloud, settings.billing_region())
    return WorkspacePlacement(cloud=_cloud(chosen), region=where)


def chosen_placement(
    cloud: str | None, region: str | None, settings: Settings
) -> WorkspacePlacement:
    """The placement of a workspace being created, checked: a 400 naming what to change."""
    if cloud is not None:
        usable = ("local", *settings.clouds.configured())
        if cloud not in usable:
            raise InvalidParameter(
                f"cloud {cloud!r} is not configured on this installation; choose one of "
                f"{', '.join(usable)} (an operator configures a cloud under clouds.{cloud})"
                if cloud in DEFAULT_REGIONS
                else f"unknown cloud {cloud!r}; choose one of {', '.join(usable)}"
            )
    placement = stored_placement(cloud, region, settings)
    known = sorted(name for name, found in REGIONS.items() if found.cloud == placement.cloud)
    if placement.region not in known:
        raise InvalidParameter(
            f"region {placement.region!r} is not a {placement.cloud} region moeserve serves "
            f"and bills; choose one of {', '.join(known)}"
        )
    return placement


def _cloud(value: str) -> Cloud:
    for cloud in DEFAULT_REGIONS:
        if cloud == value:
            return cloud
    raise ValueError(f"unknown cloud {value!r} in the database")
