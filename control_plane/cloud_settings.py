"""Settings of the clouds this installation provisions GPU node groups in (`clouds.*`).

A cloud is configured by giving its section (`MOESERVE_CLOUDS__AWS` as JSON, or `clouds.aws`
in the Helm values); a workspace may live only in a configured cloud (or `local`). The
installation id tags every cloud resource, so a sweep never touches another installation's.
Each cloud's section is that cloud's own settings model (`deploy.clouds.*_settings`) less
the installation id, which is filled in from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, SecretStr, model_validator

from deploy.clouds.aws_settings import AwsSettings
from deploy.clouds.azure_settings import AzureSettings
from deploy.clouds.gcp_settings import GcpSettings

if TYPE_CHECKING:
    from deploy.clouds.base import NodeGroups

INSTALLATION_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?$"


class CloudSettings(BaseModel):
    installation_id: str = Field(
        default="moeserve",
        pattern=INSTALLATION_PATTERN,
        description="tags every cloud resource this installation creates (1-16 lowercase "
        "letters, digits, '-'); two installations sharing an account need different ones",
    )
    worker_image: str = Field(
        default="moeserve/worker:0.1.0",
        min_length=1,
        max_length=512,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$",
        description="container image every cloud node runs (deploy/docker/worker.Dockerfile)",
    )
    head_address: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$",
        description="host:port of the Ray head (GCS) that cloud nodes join; default: the "
        "address of the cluster the control plane is attached to",
    )
    ray_auth_token: SecretStr | None = Field(
        default=None,
        description="the Ray cluster's authentication token when it runs with token auth "
        "(RAY_AUTH_MODE=token): cloud nodes need it to join; it reaches them in their "
        "start-up script (readable by whoever may read the group's template or user-data)",
    )
    sync_interval_s: float = Field(
        default=30,
        gt=0,
        description="how often node groups are scaled to their applications' replicas and "
        "groups no application holds are released (after two syncs in a row)",
    )
    aws: AwsSettings | None = Field(
        default=None,
        description="AWS: JSON object with ami_ids (region → AMI), optional subnet_ids, "
        "security_group_ids, instance_profile_arn, endpoint_url; null: AWS not configured",
    )
    gcp: GcpSettings | None = Field(
        default=None,
        description="GCP: JSON object with project and images (region → source image), "
        "optional network, subnetworks, zones, service_account_email, disk_size_gb, "
        "api_endpoint; null: GCP not configured",
    )
    azure: AzureSettings | None = Field(
        default=None,
        description="Azure: JSON object with subscription_id, resource_group, images (region "
        "→ image), subnet_ids (region → subnet id), optional admin_username, "
        "ssh_public_key, disk_size_gb, base_url; null: Azure not configured",
    )

    @model_validator(mode="before")
    @classmethod
    def _installation_into_each_cloud(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        installation = data.get("installation_id", "moeserve")
        for cloud in ("aws", "gcp", "azure"):
            section = data.get(cloud)
            if isinstance(section, dict) and "installation_id" not in section:
                data = {**data, cloud: {**section, "installation_id": installation}}
        return data

    @model_validator(mode="after")
    def _one_installation(self) -> CloudSettings:
        for cloud in ("aws", "gcp", "azure"):
            section = getattr(self, cloud)
            if section is not None and section.installation_id != self.installation_id:
                raise ValueError(
                    f"clouds.{cloud}.installation_id differs from clouds.installation_id; "
                    "leave it out"
                )
        return self

    def configured(self) -> tuple[str, ...]:
        """The clouds a workspace may live in besides `local`."""
        return tuple(c for c in ("aws", "gcp", "azure") if getattr(self, c, None) is not None)

    def node_groups(self) -> dict[str, NodeGroups]:
        """Each configured cloud's node groups (its SDK is imported here, not before)."""
        groups: dict[str, NodeGroups] = {}
        if self.aws is not None:
            from deploy.clouds.aws import AwsNodeGroups

            groups["aws"] = AwsNodeGroups(self.aws)
        if self.gcp is not None:
            from deploy.clouds.gcp import GcpNodeGroups

            groups["gcp"] = GcpNodeGroups(self.gcp)
        if self.azure is not None:
            from deploy.clouds.azure import AzureNodeGroups

            groups["azure"] = AzureNodeGroups(self.azure)
        return groups
