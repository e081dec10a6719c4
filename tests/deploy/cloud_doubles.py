"""The GCP and Azure fakes seen the same way by the end-to-end tests: the settings section
that points a control plane at the fake, node groups with test credentials, what the fake
holds now (groups with their shape and target, templates, instances), the start-up script a
group's machines boot with, and a capacity refusal of one shape."""

from __future__ import annotations

import base64
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from azure.core.credentials import AccessToken
from google.auth.credentials import AnonymousCredentials

from deploy.clouds.azure import AzureNodeGroups
from deploy.clouds.azure_settings import AzureSettings
from deploy.clouds.base import NodeGroups
from deploy.clouds.gcp import GcpNodeGroups
from deploy.clouds.gcp_settings import GcpSettings
from tests.deploy.azure_fake import FakeArm, fake_arm
from tests.deploy.gcp_fake import GROUPS, TEMPLATES, GcpFake, gcp_fake

CAPACITY_MESSAGE = "The zone does not have enough resources available to fulfill the request."


@dataclass(frozen=True)
class Group:
    name: str
    instance_type: str
    target: int
    instances: int


class CloudDouble(Protocol):
    cloud: str
    region: str

    def section(self, installation: str) -> dict[str, Any]: ...
    def node_groups(self, installation: str) -> NodeGroups: ...
    def groups(self) -> list[Group]: ...
    def leftovers(self) -> dict[str, int]: ...
    def startup_script(self, group: str) -> str: ...
    def refuse(self, instance_type: str) -> None: ...
    def reset(self) -> None: ...


class GcpDouble:
    cloud, region = "gcp", "us-central1"
    image = "projects/moeserve-images/global/images/moeserve-worker-v1"

    def __init__(self, fake: GcpFake) -> None:
        self.fake = fake

    def section(self, installation: str) -> dict[str, Any]:
        return {
            "installation_id": installation,
            "project": self.fake.project,
            "images": {self.region: self.image},
            "api_endpoint": self.fake.url,
        }

    def node_groups(self, installation: str) -> NodeGroups:
        return GcpNodeGroups(GcpSettings(**self.section(installation)), AnonymousCredentials())

    def groups(self) -> list[Group]:
        templates = {t["selfLink"]: t for t in self.fake.stores[TEMPLATES].values()}
        return [
            Group(
                name,
                templates[g["instanceTemplate"]]["properties"]["machineType"],
                g["targetSize"],
                len(self.fake.instances.get((region, name), [])),
            )
            for (region, name), g in sorted(self.fake.stores[GROUPS].items())
        ]

    def leftovers(self) -> dict[str, int]:
        instances = sum(len(i) for i in self.fake.instances.values())
        return {
            "groups": len(self.fake.stores[GROUPS]),
            "templates": len(self.fake.stores[TEMPLATES]),
            "instances": instances,
        }

    def startup_script(self, group: str) -> str:
        [stored] = [g for (_, n), g in self.fake.stores[GROUPS].items() if n == group]
        template = next(
            t for t in self.fake.stores[TEMPLATES].values()
            if t["selfLink"] == stored["instanceTemplate"]
        )  # fmt: skip
        items = template["properties"]["metadata"]["items"]
        return str(next(i["value"] for i in items if i["key"] == "startup-script"))

    def refuse(self, instance_type: str) -> None:
        self.fake.refuse(instance_type, "ZONE_RESOURCE_POOL_EXHAUSTED", CAPACITY_MESSAGE)

    def reset(self) -> None:
        self.fake.reset()


class _ArmToken:
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("fake-arm-token", int(time.time()) + 3600)


class AzureDouble:
    cloud, region = "azure", "eastus"
    subscription, resource_group = "00000000-0000-0000-0000-0000000000e2", "moeserve-e2e"

    def __init__(self, fake: FakeArm) -> None:
        self.fake = fake

    def section(self, installation: str) -> dict[str, Any]:
        subnet = (
            f"/subscriptions/{self.subscription}/resourceGroups/net/providers/"
            "Microsoft.Network/virtualNetworks/moeserve/subnets/nodes"
        )
        return {
            "installation_id": installation,
            "subscription_id": self.subscription,
            "resource_group": self.resource_group,
            "images": {self.region: "Canonical:ubuntu-24_04-lts:server:latest"},
            "subnet_ids": {self.region: subnet},
            "base_url": self.fake.url,
        }

    def node_groups(self, installation: str) -> NodeGroups:
        settings = AzureSettings(**self.section(installation))
        return AzureNodeGroups(settings, _ArmToken(), polling_interval=0)

    def groups(self) -> list[Group]:
        return [
            Group(
                s["name"],
                s["sku"]["name"],
                s["sku"]["capacity"],
                len(self.fake.instances(s["name"])),
            )
            for s in self.fake.scale_sets.values()
        ]

    def leftovers(self) -> dict[str, int]:
        return {"groups": len(self.fake.scale_sets), "instances": len(self.fake.instances())}

    def startup_script(self, group: str) -> str:
        stored = self.fake.scale_sets[group.lower()]
        custom = stored["properties"]["virtualMachineProfile"]["osProfile"]["customData"]
        return base64.b64decode(custom).decode()

    def refuse(self, instance_type: str) -> None:
        self.fake.refuse(
            "SkuNotAvailable",
            f"The requested VM size {instance_type} is currently not available in location "
            f"'{self.region}'. {CAPACITY_MESSAGE}",
            when=lambda body: body.get("sku", {}).get("name") == instance_type,
        )

    def reset(self) -> None:
        self.fake.reset()


def served_double(cloud: str) -> AbstractContextManager[Any]:
    """The fake server of `cloud`, served for the block (yields the fake itself)."""
    if cloud == "gcp":
        return gcp_fake()
    return fake_arm(AzureDouble.subscription, AzureDouble.resource_group)


def double(cloud: str, fake: Any) -> CloudDouble:
    return GcpDouble(fake) if cloud == "gcp" else AzureDouble(fake)
