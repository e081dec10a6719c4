"""What an operator configures for AWS node groups (one entry per region groups may run in);
maps 1:1 to the control plane's settings."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AwsSettings(BaseModel):
    """What the operator configures for AWS; one entry per region groups may run in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    installation_id: str = Field(description="tags every resource; sweeps stay within it")
    ami_ids: dict[str, str] = Field(
        min_length=1, description="region → AMI with Docker and the NVIDIA container toolkit"
    )
    subnet_ids: dict[str, tuple[str, ...]] = Field(
        default_factory=dict, description="region → subnets (default: every zone, default VPC)"
    )
    security_group_ids: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    instance_profile_arn: str | None = Field(default=None, description="IAM role of the nodes")
    endpoint_url: str | None = Field(default=None, description="an API endpoint (tests: moto)")

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(self.ami_ids)
