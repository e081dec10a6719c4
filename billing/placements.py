"""Where each workspace lives, as billing needs it: its cloud and region name the SKUs its
usage is metered under and the $/DBU its invoice is priced at.

Read from the control plane's `workspaces` table (columns `cloud` and `region`, NULL for
the installation's own) through a lightweight table clause, so billing imports no control
plane model. A workspace's placement never changes after creation, so a restatement of an
old hour names the same SKU as the original.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Connection, column, inspect, select, table

from billing.settings import DEFAULT_REGIONS

_WORKSPACES = table("workspaces", column("id"), column("cloud"), column("region"))


@dataclass(frozen=True)
class Placements:
    """The installation's cloud and region, and the workspaces placed elsewhere."""

    cloud: str
    region: str
    workspaces: dict[str, tuple[str, str]] = field(default_factory=dict)

    def cloud_of(self, workspace_id: str | None) -> str:
        return self.of(workspace_id)[0]

    def region_of(self, workspace_id: str | None) -> str:
        return self.of(workspace_id)[1]

    def of(self, workspace_id: str | None) -> tuple[str, str]:
        if workspace_id is None:
            return self.cloud, self.region
        return self.workspaces.get(workspace_id, (self.cloud, self.region))


def resolve_placement(
    row_cloud: str | None, row_region: str | None, cloud: str, region: str
) -> tuple[str, str]:
    """A workspace row's cloud and region: NULL columns mean the installation's `cloud` and
    `region`; a row naming another cloud only is in that cloud's default region. The one
    rule, for billing and for the control plane alike."""
    chosen = row_cloud or cloud
    if row_region is not None:
        return chosen, row_region
    return chosen, region if chosen == cloud else DEFAULT_REGIONS[chosen]  # type: ignore[index]


def load_placements(connection: Connection, cloud: str, region: str) -> Placements:
    """Every workspace with its own cloud or region (a row naming a cloud only is in that
    cloud's default region). A database without a `workspaces` table (billing alone) has
    none."""
    if not inspect(connection).has_table("workspaces"):
        return Placements(cloud, region)
    rows = connection.execute(
        select(_WORKSPACES.c.id, _WORKSPACES.c.cloud, _WORKSPACES.c.region).where(
            _WORKSPACES.c.cloud.is_not(None) | _WORKSPACES.c.region.is_not(None)
        )
    )
    placed: dict[str, tuple[str, str]] = {}
    for workspace_id, row_cloud, row_region in rows:
        placed[workspace_id] = resolve_placement(row_cloud, row_region, cloud, region)
    return Placements(cloud, region, placed)
