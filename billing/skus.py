"""SKU names and region classes: how a region's usage is named and which price row it takes.

A SKU names the product, the tier and the region, like Databricks' `system.billing.usage`:
`<TIER>_SERVERLESS_REAL_TIME_INFERENCE_<REGION>` for serving DBUs and
`<TIER>_SERVERLESS_REAL_TIME_INFERENCE_LAUNCH_<REGION>` for DBUs spent waking an endpoint from
zero. `<REGION>` is the cloud's own region name upper-cased with `-` turned into `_`
(`us-east-1` -> `US_EAST_1`, `europe-west2` -> `EUROPE_WEST2`, `local` -> `LOCAL`): the cloud's
region ids are unique across AWS, GCP and Azure, so the SKU stays unambiguous and greppable
without a second naming scheme to keep in sync.

Prices are not per region but per *region class* (docs/pricing.md: US regions share one $/DBU, EU,
UK and the Asia-Pacific groups cost more). `REGIONS` is the catalog of regions moeserve prices,
each with its cloud and region class; a region outside it is rejected rather than guessed.
"""

from __future__ import annotations

import re
from typing import NamedTuple

TIERS = ("PREMIUM", "ENTERPRISE")
PRODUCT = "SERVERLESS_REAL_TIME_INFERENCE"

_REGION_ID = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


class UnknownRegion(KeyError):
    """A region not in `REGIONS`. A `KeyError`, with a readable message."""

    def __str__(self) -> str:
        return str(self.args[0])


class Region(NamedTuple):
    cloud: str  # aws | gcp | azure | local
    region_class: (
        str  # the rate card's price row: us | eu | uk | apac | apac_southeast | sa | local
    )


def _regions(cloud: str, region_class: str, *names: str) -> dict[str, Region]:
    return {name: Region(cloud, region_class) for name in names}


# Region classes: `us` (docs/pricing.md: $0.07 on every cloud), `eu` (≈0.077), `uk` (≈0.079),
# `apac` = Japan, Korea, India (≈0.085), `apac_southeast` = Singapore, Australia, Indonesia
# (≈0.088, named after AWS's ap-southeast-*), `sa` = Brazil (≈0.088), `local` = self-hosted.
REGIONS: dict[str, Region] = {
    **_regions("aws", "us", "us-east-1", "us-east-2", "us-west-1", "us-west-2"),
    **_regions("aws", "eu", "eu-west-1", "eu-west-3", "eu-central-1", "eu-north-1"),
    **_regions("aws", "uk", "eu-west-2"),
    **_regions("aws", "apac", "ap-northeast-1", "ap-northeast-2", "ap-northeast-3", "ap-south-1"),
    **_regions("aws", "apac_southeast", "ap-southeast-1", "ap-southeast-2", "ap-southeast-3"),
    **_regions("aws", "sa", "sa-east-1"),
    **_regions("gcp", "us", "us-central1", "us-east1", "us-east4", "us-west1", "us-west4"),
    **_regions("gcp", "eu", "europe-west1", "europe-west3", "europe-west4"),
    **_regions("gcp", "uk", "europe-west2"),
    **_regions("gcp", "apac", "asia-northeast1", "asia-northeast3", "asia-south1"),
    **_regions("gcp", "apac_southeast", "asia-southeast1", "australia-southeast1"),
    **_regions("gcp", "sa", "southamerica-east1"),
    **_regions("azure", "us", "eastus", "eastus2", "centralus", "westus", "westus2", "westus3"),
    **_regions("azure", "eu", "northeurope", "westeurope", "germanywestcentral", "francecentral"),
    **_regions("azure", "uk", "uksouth", "ukwest"),
    **_regions("azure", "apac", "japaneast", "koreacentral", "centralindia"),
    **_regions("azure", "apac_southeast", "southeastasia", "australiaeast"),
    **_regions("azure", "sa", "brazilsouth"),
    **_regions("local", "local", "local"),
}


def region(name: str) -> Region:
    """The cloud and region class of a region id; `UnknownRegion` names the known ones."""
    try:
        return REGIONS[name]
    except KeyError:
        known = ", ".join(sorted(REGIONS))
        raise UnknownRegion(f"unknown region {name!r}; known regions: {known}") from None


def region_class(region_name: str) -> str:
    """The rate card's region class of a region id (`us-east-1` -> `us`, `local` -> `local`)."""
    return region(region_name).region_class


def sku_name(tier: str, region: str, *, launch: bool = False) -> str:
    """`PREMIUM_SERVERLESS_REAL_TIME_INFERENCE_US_EAST_1`, or `..._LAUNCH_US_EAST_1` with
    `launch`. `tier` is PREMIUM or ENTERPRISE (any case); `region` a cloud region id, lower-case
    letters, digits and single hyphens (it need not be in `REGIONS`: naming never fails on a
    region the catalog does not price yet, pricing does)."""
    tier_upper = tier.upper()
    if tier_upper not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; choose one of {', '.join(TIERS)}")
    if not _REGION_ID.match(region):
        raise ValueError(
            f"region {region!r} is not a region id (lower-case letters, digits, single hyphens)"
        )
    launch_part = "_LAUNCH" if launch else ""
    return f"{tier_upper}_{PRODUCT}{launch_part}_{region.upper().replace('-', '_')}"
