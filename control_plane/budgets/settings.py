"""Settings of budgets (`budgets.*`)."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr


class BudgetSettings(BaseModel):
    refresh_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="how often each control plane reads budgets' spend, records threshold "
        "crossings and sends due webhooks (also how late one process sees another's "
        "finished queries: the overshoot bound across processes)",
    )
    webhook_signing_secret: SecretStr | None = Field(
        default=None,
        description="signs every budget webhook (header X-Moeserve-Signature: t=<unix "
        "time>,v1=<hex HMAC-SHA256 of '<t>.<body>'>); webhook actions are refused without it",
    )
    webhook_private_targets: bool = Field(
        default=False,
        description="allow webhook targets on loopback, private or link-local addresses "
        "(off: a tenant cannot make the control plane call into its own network)",
    )
    webhook_timeout_s: float = Field(default=5.0, gt=0, description="per delivery attempt")
