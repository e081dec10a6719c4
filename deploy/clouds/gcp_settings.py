"""What an operator configures for GCP node groups, and what a spec becomes on GCP: the names,
labels and request bodies of a group's regional instance template and managed instance
group (MIG). Bodies are plain dicts in the SDK's field names (proto-plus builds its messages
from them), so this module imports no SDK.

GCP labels allow only `[a-z0-9_-]` in keys and values of at most 63 characters, and our tag
keys hold ":"; instances therefore carry labels named `moeserve-installation`, … with
sanitized values, while the exact tags travel as JSON in the `description` of the template
and the MIG (which, unlike instances, have no labels at all): that is what ownership is read
from, so a sanitized value can never make one installation's group look like another's.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from deploy.catalog import Candidate
from deploy.clouds.base import (
    TAG_ENDPOINT_ID,
    TAG_INSTALLATION,
    TAG_NODE_GROUP,
    TAG_SERVED_ENTITY,
    NodeGroupSpec,
)
from deploy.clouds.startup import startup_script

# The group's shape, readable at zero instances; the same key as on AWS.
TAG_INSTANCE_TYPE = "moeserve:instance-type"
LABEL_KEYS = {
    TAG_INSTALLATION: "moeserve-installation",
    TAG_ENDPOINT_ID: "moeserve-endpoint-id",
    TAG_SERVED_ENTITY: "moeserve-served-entity",
    TAG_NODE_GROUP: "moeserve-node-group",
    TAG_INSTANCE_TYPE: "moeserve-machine-type",
}
_LABEL_INVALID = re.compile(r"[^a-z0-9_-]+")
_MAX_NAME = 63
_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


class GcpSettings(BaseModel):
    """What the operator configures for GCP; one image per region groups may run in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    installation_id: str = Field(description="tags every resource; sweeps stay within it")
    project: str = Field(min_length=1, description="the project groups are created in")
    images: dict[str, str] = Field(
        min_length=1,
        description="region → boot image with Docker and the NVIDIA container toolkit, "
        "e.g. projects/P/global/images/moeserve-worker",
    )
    network: str | None = Field(
        default=None, description="VPC network (default: the project's `default` network)"
    )
    subnetworks: dict[str, str] = Field(
        default_factory=dict, description="region → subnetwork (default: the network's own)"
    )
    zones: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description="region → the zones groups may use there, e.g. those offering the GPUs "
        "(default: GCP's choice among the region's zones)",
    )
    external_ip: bool = Field(
        default=True,
        description="an ephemeral public IP per node, to pull the worker image; turn off "
        "when the subnetwork has Cloud NAT or a private registry",
    )
    service_account_email: str | None = Field(default=None, description="the nodes' identity")
    disk_size_gb: int = Field(default=200, ge=10, description="boot disk (images are large)")
    disk_type: str = Field(default="pd-balanced", description="boot disk type")
    api_endpoint: str | None = Field(default=None, description="an API endpoint (tests: a fake)")
    operation_timeout_s: float = Field(
        default=900.0, gt=0, description="how long to wait for one long-running operation"
    )

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(self.images)


def digest(value: str, length: int = 10) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:length]


def label_value(value: str) -> str:
    """`value` as a GCP label value: unchanged when already valid, else sanitized, cut and
    suffixed with a hash of the original so distinct values stay distinct."""
    if len(value) <= _MAX_NAME and not _LABEL_INVALID.search(value):
        return value
    return f"{_LABEL_INVALID.sub('-', value.lower())[:52]}-{digest(value)}"


def group_tags(spec: NodeGroupSpec, candidate: Candidate) -> dict[str, str]:
    """The exact tags of a group (and its template) of `candidate`'s shape."""
    return {**spec.tags, TAG_INSTANCE_TYPE: candidate.name}


def read_tags(description: str) -> dict[str, str]:
    """The tags a template's or MIG's description carries; {} for one that is not ours."""
    try:
        tags = json.loads(description or "{}")
    except ValueError:
        return {}
    if not isinstance(tags, dict):
        return {}
    return {str(k): str(v) for k, v in tags.items() if str(k).startswith("moeserve:")}


def template_name(spec: NodeGroupSpec, body_digest: str) -> str:
    """`<group name>-<hash>`, within 63 characters. Templates are immutable, so the hash
    covers the whole template (shape included): a changed spec is a new template."""
    suffix = digest(f"{spec.name}\0{body_digest}", 8)
    return f"{spec.name[: _MAX_NAME - len(suffix) - 1]}-{suffix}"


def template_body(
    settings: GcpSettings, spec: NodeGroupSpec, candidate: Candidate
) -> dict[str, Any]:
    """The regional instance template of one shape. The catalog's GCP shapes (a2, a3, g2)
    come with their GPUs, so no `guest_accelerators`; GPU instances cannot live-migrate,
    hence `on_host_maintenance=TERMINATE`."""
    region = candidate.region
    tags = group_tags(spec, candidate)
    interface: dict[str, Any] = {
        "network": settings.network or f"projects/{settings.project}/global/networks/default"
    }
    if region in settings.subnetworks:
        interface["subnetwork"] = settings.subnetworks[region]
    if settings.external_ip:
        interface["access_configs"] = [{"name": "external-nat", "type_": "ONE_TO_ONE_NAT"}]
    properties: dict[str, Any] = {
        "machine_type": candidate.name,
        "labels": {LABEL_KEYS[k]: label_value(v) for k, v in tags.items()},
        "metadata": {"items": [{"key": "startup-script", "value": startup_script(spec)}]},
        "disks": [
            {
                "boot": True,
                "auto_delete": True,
                "type_": "PERSISTENT",
                "initialize_params": {
                    "source_image": settings.images[region],
                    "disk_size_gb": settings.disk_size_gb,
                    "disk_type": settings.disk_type,
                    "labels": {LABEL_KEYS[k]: label_value(v) for k, v in spec.tags.items()},
                },
            }
        ],
        "network_interfaces": [interface],
        "scheduling": {"on_host_maintenance": "TERMINATE", "automatic_restart": True},
    }
    if settings.service_account_email is not None:
        properties["service_accounts"] = [
            {"email": settings.service_account_email, "scopes": _SCOPES}
        ]
    body_digest = digest(json.dumps([tags, properties], sort_keys=True), 16)
    return {
        "name": template_name(spec, body_digest),
        "description": json.dumps(tags, sort_keys=True),
        "properties": properties,
    }


def group_body(
    settings: GcpSettings, spec: NodeGroupSpec, candidate: Candidate, template: str
) -> dict[str, Any]:
    """The regional MIG of `spec.count` instances of `template` (its URL). `ANY` lets GCP put
    instances in whichever zones of the region have the GPUs, which also requires turning
    proactive redistribution off."""
    distribution: dict[str, Any] = {"target_shape": "ANY"}
    if candidate.region in settings.zones:
        zones = settings.zones[candidate.region]
        distribution["zones"] = [{"zone": f"zones/{zone}"} for zone in zones]
    return {
        "name": spec.name,
        "description": json.dumps(group_tags(spec, candidate), sort_keys=True),
        "base_instance_name": f"moeserve-{spec.installation_id}-{digest(spec.name)}",
        "instance_template": template,
        "target_size": spec.count,
        "distribution_policy": distribution,
        "update_policy": {"type_": "OPPORTUNISTIC", "instance_redistribution_type": "NONE"},
    }
