"""What an operator configures for Azure node groups (one image per region groups may run
in); maps 1:1 to the control plane's settings.

Every scale set lives in one resource group of one subscription: Azure names are unique per
resource group whatever the region, which is what lets a group be found by its name alone.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

# A shared image gallery image (version), a managed image, or a community / shared gallery
# image: a resource id. Or a marketplace image as `publisher:offer:sku:version`.
_RESOURCE_ID = re.compile(r"^/(subscriptions|CommunityGalleries|SharedGalleries)/", re.I)
_URN = re.compile(r"^[^:\s]+:[^:\s]+:[^:\s]+:[^:\s]+$")


class AzureSettings(BaseModel):
    """What the operator configures for Azure; one image per region groups may run in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    installation_id: str = Field(description="tags every resource; sweeps stay within it")
    subscription_id: str = Field(min_length=1, description="the subscription groups bill to")
    resource_group: str = Field(
        min_length=1, description="the resource group every scale set is created in"
    )
    images: dict[str, str] = Field(
        min_length=1,
        description="region → image with Docker and the NVIDIA container toolkit: a gallery "
        "or managed image resource id, or a marketplace `publisher:offer:sku:version`",
    )
    subnet_ids: dict[str, str] = Field(
        default_factory=dict,
        description="region → subnet resource id the nodes' NICs join (the Ray head must be "
        "reachable from it). Needed in every region a group is created in: Azure refuses a "
        "Uniform scale set without a network profile, so `ensure` refuses (ShapeNotOffered) a "
        "candidate region without one before any call",
    )
    admin_username: str = Field(default="moeserve", min_length=1, max_length=64)
    ssh_public_key: str | None = Field(
        default=None,
        description="OpenSSH public key of the nodes' admin user (`ssh-rsa ...`). Azure requires "
        "a key or a password for a Linux VM: without one, each new scale set gets a throwaway "
        "key whose private half is never kept, so nobody can log in",
    )
    base_url: str | None = Field(
        default=None,
        description="the Resource Manager endpoint (default: Azure public cloud). Tests point "
        "it at a fake on http://127.0.0.1; plain http is allowed for that only",
    )
    disk_size_gb: int = Field(default=200, ge=30, le=4095, description="OS disk of each node")

    @field_validator("images")
    @classmethod
    def _image_ids(cls, images: dict[str, str]) -> dict[str, str]:
        for region, image in images.items():
            if not (_RESOURCE_ID.match(image) or _URN.match(image)):
                raise ValueError(
                    f"image of {region} is neither a resource id nor publisher:offer:sku:version: "
                    f"{image!r}"
                )
        return images

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(self.images)
