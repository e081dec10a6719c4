"""`MeteringContext`: what a metering run needs besides the database and the clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from billing.ratecard import RateCards

# (entity_name, entity_version or None) -> model family ("dbrx", "mixtral"), the rate card's
# key. The ledger does not know families; the control plane injects its model registry.
FamilyResolver = Callable[[str, str | None], str]
# endpoint_id -> the endpoint's tags (key -> value), copied into each record's custom_tags.
TagsResolver = Callable[[str], dict[str, str]]


def no_tags(endpoint_id: str) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class MeteringContext:
    """The deployment's cloud, region and tier (they name the SKU: `billing.skus.sku_name`),
    the versioned rate cards, and `family_of`, which maps a
    served entity's model to its model family."""

    cloud: str
    region: str
    tier: str
    rate_cards: RateCards
    family_of: FamilyResolver
    tags_of: TagsResolver = no_tags  # tags as they are when the record is written
