"""`MeteringContext`: what a metering run needs besides the database and the clock."""

from __future__ import annotations

from dataclasses import dataclass

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
