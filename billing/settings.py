"""Billing's settings (part of the control plane's `Settings`, under `billing`): where the
installation bills (region, tier), its rate cards, how often usage is metered, and Stripe.
Pure data: importing it loads neither Ray nor torch."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

Cloud = Literal["local", "aws", "gcp", "azure"]
DEFAULT_REGIONS: dict[Cloud, str] = {
    "local": "local",
    "aws": "us-east-1",
    "gcp": "us-central1",
    "azure": "eastus",
}


class BillingSettings(BaseModel):
    """Where this installation runs (prices differ by cloud, region and tier), the rate
    cards, how often usage is metered, and Stripe."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    region: str | None = Field(
        default=None,
        description="the cloud region this installation bills in (its SKUs and $/DBU); "
        "default: local, us-east-1, us-central1 or eastus for the cloud",
    )
    tier: Literal["PREMIUM", "ENTERPRISE"] = "PREMIUM"
    rate_card_dir: Path | None = Field(
        default=None, description="versioned rate-card TOML files; default: the packaged ones"
    )
    metering_interval_s: float = Field(
        default=60, gt=0, description="how often usage rows and capacity become hourly records"
    )
    run_metering: bool = Field(default=True, description="meter in this process")
    stripe_api_key: SecretStr | None = Field(default=None, description="off when unset")
    stripe_api_base: str | None = Field(
        default=None, description="another Stripe API address (tests, proxies)"
    )
    stripe_webhook_secret: SecretStr | None = None
    stripe_delivery: Literal["meter_events", "invoices"] = Field(
        default="invoices",
        description="meter_events: one Stripe meter event per hourly record; invoices: "
        "invoice items and an invoice at period close",
    )

    def region_in(self, cloud: Cloud) -> str:
        """The billing region: the configured one, or the cloud's default."""
        return self.region or DEFAULT_REGIONS[cloud]
