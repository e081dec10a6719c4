"""The cloud-neutral node-group interface: what every cloud (AWS Auto Scaling groups, GCP
managed instance groups, Azure VM scale sets) offers the reconciler.

A node group is the GPU capacity of one served entity: instances of one shape in one region
whose nodes join the installation's Ray cluster and advertise a Ray resource only that group
has (`NodeGroupSpec.ray_resource`, 1 per node), so the entity's replicas are placed there
and nowhere else. Everything a group creates is named deterministically from our own ids
and tagged with them, so a retried or restarted `ensure` finds what an earlier one created
instead of doubling it, and `sweep_orphans` can release what no endpoint owns.

Shapes come from the catalog (`deploy.catalog.candidates_across`), in the order to try
them: a capacity or quota error on one makes `ensure` release what it created for it and
try the next; when none is left it raises `CapacityError` with the cloud's messages.
Pure: imports no cloud SDK.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from deploy.catalog import Candidate

TAG_INSTALLATION = "moeserve:installation"
TAG_ENDPOINT_ID = "moeserve:endpoint-id"
TAG_SERVED_ENTITY = "moeserve:served-entity"
TAG_NODE_GROUP = "moeserve:node-group"
NODE_RESOURCE_PREFIX = "moeserve-group-"  # the custom Ray resource of every node group
# Names: lowercase letters, digits and dashes, valid for an ASG, a launch template, a GCP
# instance group and an Azure scale set alike (GCP's limit, 63, is the tightest).
_NAME_PART = re.compile(r"[^a-z0-9-]+")
_MAX_NAME = 63


def _slug(value: str, limit: int) -> str:
    return _NAME_PART.sub("-", value.lower()).strip("-")[:limit].strip("-") or "x"


def _digest(value: str, length: int = 10) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:length]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NodeGroupSpec(_Frozen):
    """What one served entity needs from a cloud: `count` nodes of the first shape of
    `candidates` that the cloud can supply, each running the installation's Ray worker."""

    installation_id: str = Field(
        pattern=r"^[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?$",
        description="this control plane's installation; every resource is tagged with it",
    )
    endpoint_id: str = Field(min_length=1, description="the owning endpoint's id")
    served_entity: str = Field(min_length=1, description="the served entity's name")
    app_name: str = Field(min_length=1, description="the entity's Ray Serve application")
    candidates: tuple[Candidate, ...] = Field(
        min_length=1, description="shapes to try in order (catalog order: region, then price)"
    )
    count: int = Field(ge=0, description="nodes wanted now; 0 releases every instance")
    max_count: int | None = Field(
        default=None, ge=1, description="the group's ceiling (default: max(count, 1))"
    )
    head_address: str = Field(
        pattern=r"^[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$",
        description="host:port of the Ray head (GCS) the nodes join",
    )
    worker_image: str = Field(min_length=1, description="container image of the Ray worker")
    ray_auth_token: SecretStr | None = Field(
        default=None,
        description="the Ray cluster's authentication token, when it has token auth on: the "
        "nodes need it to join (written to a root-only env file at boot)",
    )

    @field_validator("ray_auth_token")
    @classmethod
    def _one_line(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and any(c in token.get_secret_value() for c in "\r\n\x00"):
            raise ValueError("ray_auth_token must be one line")
        return token

    @field_validator("candidates")
    @classmethod
    def _one_cloud(cls, candidates: tuple[Candidate, ...]) -> tuple[Candidate, ...]:
        clouds = {c.cloud for c in candidates}
        if len(clouds) != 1:
            raise ValueError(f"candidates span several clouds: {sorted(clouds)}")
        return candidates

    @property
    def cloud(self) -> str:
        return self.candidates[0].cloud

    @property
    def name(self) -> str:
        """`moeserve-<installation>-<endpoint id>-<hash of the entity>`: stable across
        restarts and config versions of the same served entity."""
        entity = _digest(f"{self.endpoint_id}\0{self.served_entity}")
        endpoint_room = _MAX_NAME - len(f"moeserve-{self.installation_id}--{entity}")
        endpoint = _slug(self.endpoint_id, endpoint_room)
        return f"moeserve-{self.installation_id}-{endpoint}-{entity}"

    @property
    def ray_resource(self) -> str:
        """The custom Ray resource each node of the group advertises (value 1)."""
        return node_resource(self.name)

    @property
    def ceiling(self) -> int:
        return self.max_count if self.max_count is not None else max(self.count, 1)

    @property
    def tags(self) -> dict[str, str]:
        return {
            TAG_INSTALLATION: self.installation_id,
            TAG_ENDPOINT_ID: self.endpoint_id,
            TAG_SERVED_ENTITY: self.served_entity[:256],
            TAG_NODE_GROUP: self.name,
        }


def node_resource(group_name: str) -> str:
    """The custom Ray resource the nodes of the group named `group_name` advertise."""
    return f"{NODE_RESOURCE_PREFIX}{_digest(group_name, 12)}"


class ShapeFailure(_Frozen):
    """One shape the cloud refused for capacity or quota, with its own words."""

    region: str
    instance_type: str
    code: str  # the cloud's error code, e.g. InsufficientInstanceCapacity
    message: str

    def describe(self) -> str:
        return f"{self.instance_type} in {self.region}: {self.code}: {self.message}"


class NodeGroup(_Frozen):
    """A group as the cloud reports it now."""

    name: str
    cloud: str
    region: str
    instance_type: str
    desired: int
    running: int  # instances launched and not terminating
    tags: Mapping[str, str]
    failures: tuple[ShapeFailure, ...] = Field(
        default=(), description="shapes this ensure tried and the cloud refused, in order"
    )

    @property
    def message(self) -> str:
        """For the endpoint's state message: the shapes that were refused before this one."""
        return "; ".join(f.describe() for f in self.failures)


class NodeGroupError(Exception):
    """A node-group operation failed; the message is meant for the endpoint's state."""


class CapacityError(NodeGroupError):
    """Every candidate shape was refused for capacity or quota: DEPLOYMENT_FAILED, with the
    cloud's messages. Nothing created for the refused shapes is left behind."""

    def __init__(self, failures: tuple[ShapeFailure, ...]) -> None:
        self.failures = failures
        self.cloud_message = "; ".join(f.describe() for f in failures)
        super().__init__(f"no candidate shape could be launched: {self.cloud_message}")


class CloudCredentialsError(NodeGroupError):
    """The cloud's credentials are missing or rejected; raised at provider start."""


class ShapeNotOffered(NodeGroupError, ValueError):
    """A candidate names a cloud or region this provider is not configured for; raised
    before any cloud call."""


class NodeGroupNotFound(NodeGroupError, LookupError):
    """No group of that name exists (scale of a released group)."""


class NodeGroups(Protocol):
    """Node groups of one cloud. Every method blocks on the cloud; call it from a worker
    thread, never inside a database transaction."""

    def check_credentials(self) -> str:
        """Who the provider acts as; `CloudCredentialsError` when it cannot."""
        ...

    def ensure(self, spec: NodeGroupSpec) -> NodeGroup:
        """Create the group, or find the one an earlier call created, with `spec.count`
        nodes. Idempotent; fails over through `spec.candidates` on capacity and quota
        errors and raises `CapacityError` when none is left."""
        ...

    def scale(self, name: str, count: int) -> NodeGroup:
        """Set the group's node count (0 releases every instance, keeps the group)."""
        ...

    def release(self, name: str) -> None:
        """Delete the group, its instances and its templates. Idempotent."""
        ...

    def list_owned(self) -> list[NodeGroup]:
        """Every group tagged with this installation."""
        ...

    def sweep_orphans(self, owned_names: set[str]) -> list[str]:
        """Release every group and template of this installation whose name is not in
        `owned_names`; return the names released."""
        ...
