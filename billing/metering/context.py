"""`MeteringContext`: what a metering run needs besides the database and the clock."""

from __future__ import annotations

from dataclasses import dataclass, field

from billing.placements import Placements
from billing.ratecard import RateCards


@dataclass(frozen=True)
class MeteringContext:
    """The installation's cloud, region and tier (they name the SKU: `billing.skus.sku_name`)
    and the versioned rate cards. Everything else metering needs is in its own tables: the
    usage rows and capacity intervals carry their model family, `endpoint_tags` the tags."""

    cloud: str
    region: str
    tier: str
    rate_cards: RateCards
    # Workspaces placed in another cloud or region than the installation's (their SKUs and
    # records follow them); loaded at the start of each run (`with_placements`).
    placements: Placements | None = field(default=None)

    def where(self, workspace_id: str | None) -> tuple[str, str]:
        """The cloud and region `workspace_id`'s usage is metered under."""
        if self.placements is None:
            return self.cloud, self.region
        return self.placements.of(workspace_id)
