"""The Virtual Machine Scale Set of one shape of a group, as the ARM JSON body of its PUT.

Azure has no separate launch template: the VM size (`sku.name`), the image, the start-up
script (`osProfile.customData`, base64; cloud-init runs it at first boot) and the network
are all properties of the scale set itself. The body is built from our own ids only, so the
same spec always PUTs the same scale set (bar a throwaway SSH key, see `AzureSettings`).
"""

from __future__ import annotations

import base64
from typing import Any

from deploy.catalog import Candidate
from deploy.clouds.azure_settings import AzureSettings
from deploy.clouds.base import NodeGroupSpec
from deploy.clouds.startup import startup_script

TAG_INSTANCE_TYPE = "moeserve:instance-type"  # the group's shape, readable at zero instances
# Linux computer name prefixes are at most 58 characters (Azure appends 6 for the instance).
_MAX_PREFIX = 58


def scale_set_body(
    settings: AzureSettings, spec: NodeGroupSpec, candidate: Candidate, ssh_public_key: str
) -> dict[str, Any]:
    """A Uniform scale set of `spec.count` VMs of `candidate`'s size in its region.

    Manual upgrade policy: a changed model never restarts running nodes behind Ray's back.
    No overprovisioning: Azure would otherwise boot extra VMs and delete them once enough
    succeed, and each would briefly join the Ray cluster with the group's resource."""
    region = candidate.region
    user = settings.admin_username
    nic = {
        "name": "moeserve-nic",
        "properties": {
            "primary": True,
            "ipConfigurations": [
                {
                    "name": "moeserve-ip",
                    "properties": {"subnet": {"id": settings.subnet_ids[region]}},
                }
            ],
        },
    }
    return {
        "location": region,
        "tags": {**spec.tags, TAG_INSTANCE_TYPE: candidate.name},
        "sku": {"name": candidate.name, "tier": "Standard", "capacity": spec.count},
        "properties": {
            "orchestrationMode": "Uniform",
            "upgradePolicy": {"mode": "Manual"},
            "overprovision": False,
            "virtualMachineProfile": {
                "osProfile": {
                    "computerNamePrefix": spec.name[:_MAX_PREFIX].rstrip("-"),
                    "adminUsername": user,
                    "customData": base64.b64encode(startup_script(spec).encode()).decode(),
                    "linuxConfiguration": {
                        "disablePasswordAuthentication": True,
                        "ssh": {
                            "publicKeys": [
                                {
                                    "path": f"/home/{user}/.ssh/authorized_keys",
                                    "keyData": ssh_public_key,
                                }
                            ]
                        },
                    },
                },
                "storageProfile": {
                    "imageReference": image_reference(settings.images[region]),
                    # StandardSSD: every GPU size takes it (Premium needs an "s" size).
                    "osDisk": {
                        "createOption": "FromImage",
                        "caching": "ReadWrite",
                        "diskSizeGB": settings.disk_size_gb,
                        "managedDisk": {"storageAccountType": "StandardSSD_LRS"},
                    },
                },
                "networkProfile": {"networkInterfaceConfigurations": [nic]},
            },
        },
    }


def image_reference(image: str) -> dict[str, str]:
    """ARM `imageReference` of a configured image (validated by `AzureSettings`)."""
    lowered = image.lower()
    if lowered.startswith("/communitygalleries/"):
        return {"communityGalleryImageId": image}
    if lowered.startswith("/sharedgalleries/"):
        return {"sharedGalleryImageId": image}
    if lowered.startswith("/subscriptions/"):
        return {"id": image}
    publisher, offer, sku, version = image.split(":")
    return {"publisher": publisher, "offer": offer, "sku": sku, "version": version}


def throwaway_ssh_key() -> str:
    """An OpenSSH RSA public key whose private half is dropped at once: Azure requires a key
    or a password on a Linux VM, and the nodes need neither (they only run the worker)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return public.decode() + " moeserve-throwaway"
