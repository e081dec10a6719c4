"""The launch template of one shape of a group: its data (AMI, instance type, the start-up
script as user-data, the tags its instances and volumes get) and the EC2 `ClientToken` that
makes creating it idempotent (derived from our own ids and the data, never random)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from deploy.catalog import Candidate
from deploy.clouds.aws_settings import AwsSettings
from deploy.clouds.base import NodeGroupSpec
from deploy.clouds.startup import startup_script

TAG_INSTANCE_TYPE = "moeserve:instance-type"  # the group's shape, readable at zero instances


def template_data(
    settings: AwsSettings, spec: NodeGroupSpec, candidate: Candidate
) -> dict[str, Any]:
    region = candidate.region
    instance_tags = {**spec.tags, TAG_INSTANCE_TYPE: candidate.name}
    data: dict[str, Any] = {
        "ImageId": settings.ami_ids[region],
        "InstanceType": candidate.name,
        "UserData": base64.b64encode(startup_script(spec).encode()).decode(),
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": tag_list(instance_tags)},
            {"ResourceType": "volume", "Tags": tag_list(spec.tags)},
        ],
    }
    if region in settings.security_group_ids:
        data["SecurityGroupIds"] = list(settings.security_group_ids[region])
    if settings.instance_profile_arn is not None:
        data["IamInstanceProfile"] = {"Arn": settings.instance_profile_arn}
    return data


def client_token(name: str, data: dict[str, Any]) -> str:
    """EC2 ClientToken (≤ 64 ASCII): the same template request always carries the same one."""
    digest = hashlib.sha256(repr(sorted(data.items())).encode()).hexdigest()[:24]
    return f"{hashlib.sha256(name.encode()).hexdigest()[:32]}-{digest}"


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]
