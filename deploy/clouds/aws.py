"""AWS node groups: one launch template and one Auto Scaling group per served entity.

The template carries the shape (instance type, AMI, the start-up script as user-data) and is
named after the group and its instance type; the group launches it across the region's
subnets (or zones) with MinSize 0, and tags every instance it launches. Idempotency comes
from deterministic names and tags, a describe before every create, `AlreadyExists` answers
taken as "an earlier attempt made it", and an EC2 `ClientToken` derived from our own ids on
every template we create, so a retried or restarted `ensure` never doubles capacity.

boto3 is imported when an `AwsNodeGroups` is built, never at module import: the control
plane starts without it (`pip install 'moeserve[aws]'`).
"""

from __future__ import annotations

from typing import Any

from deploy.catalog import Candidate
from deploy.clouds.aws_failures import failure_from_activities, failure_from_error
from deploy.clouds.aws_settings import AwsSettings
from deploy.clouds.aws_templates import TAG_INSTANCE_TYPE, client_token, tag_list, template_data
from deploy.clouds.base import (
    TAG_INSTALLATION,
    TAG_NODE_GROUP,
    CloudCredentialsError,
    NodeGroup,
    NodeGroupError,
    NodeGroupNotFound,
    NodeGroupSpec,
    ShapeFailure,
)
from deploy.clouds.failover import Existing, check_offered, ensure_with_failover

__all__ = ["AwsNodeGroups", "AwsSettings"]
_GONE = {"Terminating", "Terminating:Wait", "Terminating:Proceed", "Terminated"}


class AwsNodeGroups:
    """`NodeGroups` on EC2 Auto Scaling. Every method blocks on AWS."""

    def __init__(self, settings: AwsSettings, session: Any = None) -> None:
        try:
            import boto3  # type: ignore[import-untyped]
            from botocore.exceptions import (  # type: ignore[import-untyped]
                BotoCoreError,
                ClientError,
            )
        except ImportError as exc:
            raise NodeGroupError(
                "the aws provider needs boto3: pip install 'moeserve[aws]'"
            ) from exc
        self.settings = settings
        self._session = session if session is not None else boto3.session.Session()
        self._client_error: type[Exception] = ClientError
        self._botocore_error: type[Exception] = BotoCoreError
        self._clients: dict[tuple[str, str], Any] = {}

    def client(self, service: str, region: str) -> Any:
        key = (service, region)
        if key not in self._clients:
            self._clients[key] = self._session.client(
                service, region_name=region, endpoint_url=self.settings.endpoint_url
            )
        return self._clients[key]

    def check_credentials(self) -> str:
        """The caller's ARN (STS GetCallerIdentity); a clear error when there is none."""
        if self._session.get_credentials() is None:
            raise CloudCredentialsError(
                "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "or AWS_PROFILE, or give the control plane an IAM role (instance profile, "
                "IRSA / EKS pod identity)"
            )
        try:
            identity = self.client("sts", self.settings.regions[0]).get_caller_identity()
        except (self._client_error, self._botocore_error) as exc:
            raise CloudCredentialsError(f"AWS rejected the credentials: {exc}") from exc
        return str(identity["Arn"])

    # --- the NodeGroups protocol ---------------------------------------------------------

    def ensure(self, spec: NodeGroupSpec) -> NodeGroup:
        check_offered(
            spec,
            cloud="aws",
            installation_id=self.settings.installation_id,
            configured=self.settings.regions,
            what="AMI",
        )
        found = self._find(spec.name)
        existing = None
        if found is not None:
            region, group = found
            existing = Existing(
                region,
                _tag(group, TAG_INSTANCE_TYPE),
                self._launch_failure(region, group),
                keep=lambda: self._converge(spec, region, group),
            )
        return ensure_with_failover(
            spec,
            existing,
            create=lambda candidate: self._create(spec, candidate),
            release=lambda region: self._release_in(region, spec.name),
        )

    def scale(self, name: str, count: int) -> NodeGroup:
        if count < 0:
            raise ValueError(f"a node count is never negative, got {count}")
        found = self._find(name)
        if found is None:
            raise NodeGroupNotFound(f"no AWS node group {name} in {', '.join(self._regions())}")
        region, group = found
        self._set_count(region, name, count, max(count, group["MaxSize"]))
        updated = self._describe(region, name)
        assert updated is not None
        return self._state(region, updated)

    def release(self, name: str) -> None:
        for region in self._regions():
            self._release_in(region, name)

    def list_owned(self) -> list[NodeGroup]:
        owned = []
        for region in self._regions():
            for group in self._owned_groups(region):
                owned.append(self._state(region, group))
        return sorted(owned, key=lambda g: (g.region, g.name))

    def sweep_orphans(self, owned_names: set[str]) -> list[str]:
        """Groups, and templates left without a group (a crash between the two creates), of
        this installation that no endpoint owns."""
        released: set[str] = set()
        for region in self._regions():
            names = {_tag(g, TAG_NODE_GROUP) for g in self._owned_groups(region)}
            names |= {_tag(t, TAG_NODE_GROUP) for t in self._templates(region, TAG_INSTALLATION)}
            for name in sorted(names - owned_names - {""}):
                self._release_in(region, name)
                released.add(name)
        return sorted(released)

    # --- one region ------------------------------------------------------------------------

    def _create(self, spec: NodeGroupSpec, candidate: Candidate) -> NodeGroup | ShapeFailure:
        failure = self._try_create(spec, candidate)
        if failure is not None:
            return failure
        created = self._describe(candidate.region, spec.name)
        assert created is not None, "a group just created is described"
        return self._state(candidate.region, created)

    def _try_create(self, spec: NodeGroupSpec, candidate: Candidate) -> ShapeFailure | None:
        """Create template and group for one shape; the refusal when AWS refuses it."""
        region = candidate.region
        try:
            template = self._ensure_template(spec, candidate)
            self._create_group(spec, candidate, template)
        except self._client_error as exc:
            error = getattr(exc, "response", {}).get("Error", {})
            failure = failure_from_error(error, region, candidate.name)
            if failure is None:
                raise
            return failure
        group = self._describe(region, spec.name)
        return None if group is None else self._launch_failure(region, group)

    def _ensure_template(self, spec: NodeGroupSpec, candidate: Candidate) -> str:
        region = candidate.region
        name = f"{spec.name}-{candidate.name}"
        data = template_data(self.settings, spec, candidate)
        ec2 = self.client("ec2", region)
        token = client_token(name, data)
        tags = [{"ResourceType": "launch-template", "Tags": tag_list(spec.tags)}]
        try:
            ec2.create_launch_template(
                LaunchTemplateName=name,
                LaunchTemplateData=data,
                ClientToken=token,
                TagSpecifications=tags,
            )
        except self._client_error as exc:
            if _code(exc) != "InvalidLaunchTemplateName.AlreadyExistsException":
                raise
            # An earlier attempt made it; make its latest version ours if the spec moved on.
            latest = ec2.describe_launch_template_versions(
                LaunchTemplateName=name, Versions=["$Latest"]
            )["LaunchTemplateVersions"][0]["LaunchTemplateData"]
            # Tags are set at creation; moto also mixes the template's own tags in here.
            if any(latest.get(k) != v for k, v in data.items() if k != "TagSpecifications"):
                ec2.create_launch_template_version(
                    LaunchTemplateName=name, LaunchTemplateData=data, ClientToken=token
                )
        return name

    def _create_group(self, spec: NodeGroupSpec, candidate: Candidate, template: str) -> None:
        region = candidate.region
        tags = {**spec.tags, TAG_INSTANCE_TYPE: candidate.name}
        where: dict[str, Any]
        if region in self.settings.subnet_ids:
            where = {"VPCZoneIdentifier": ",".join(self.settings.subnet_ids[region])}
        else:
            zones = self.client("ec2", region).describe_availability_zones()
            where = {"AvailabilityZones": [z["ZoneName"] for z in zones["AvailabilityZones"]]}
        try:
            self.client("autoscaling", region).create_auto_scaling_group(
                AutoScalingGroupName=spec.name,
                LaunchTemplate={"LaunchTemplateName": template, "Version": "$Latest"},
                MinSize=0,
                MaxSize=spec.ceiling,
                DesiredCapacity=spec.count,
                Tags=[{"Key": k, "Value": v, "PropagateAtLaunch": True} for k, v in tags.items()],
                **where,
            )
        except self._client_error as exc:
            if _code(exc) != "AlreadyExists":  # a concurrent or earlier attempt made it
                raise

    def _converge(self, spec: NodeGroupSpec, region: str, group: dict[str, Any]) -> NodeGroup:
        if group["DesiredCapacity"] != spec.count or group["MaxSize"] < spec.ceiling:
            self._set_count(region, spec.name, spec.count, max(spec.ceiling, group["MaxSize"]))
            group = self._describe(region, spec.name) or group
        return self._state(region, group)

    def _set_count(self, region: str, name: str, count: int, ceiling: int) -> None:
        self.client("autoscaling", region).update_auto_scaling_group(
            AutoScalingGroupName=name, MinSize=0, MaxSize=ceiling, DesiredCapacity=count
        )

    def _launch_failure(self, region: str, group: dict[str, Any]) -> ShapeFailure | None:
        """A capacity refusal that left the group without instances; a group that runs some
        keeps them (its state message says why the rest are missing)."""
        if group["DesiredCapacity"] == 0 or _live(group) > 0:
            return None
        activities = self.client("autoscaling", region).describe_scaling_activities(
            AutoScalingGroupName=group["AutoScalingGroupName"]
        )["Activities"]
        return failure_from_activities(
            activities, group["CreatedTime"], region, _tag(group, TAG_INSTANCE_TYPE)
        )

    def _release_in(self, region: str, name: str) -> None:
        autoscaling = self.client("autoscaling", region)
        if self._describe(region, name) is not None:
            try:
                autoscaling.delete_auto_scaling_group(AutoScalingGroupName=name, ForceDelete=True)
            except self._client_error as exc:
                if "not found" not in str(exc).lower():
                    raise
        ec2 = self.client("ec2", region)
        for template in self._templates(region, TAG_NODE_GROUP, name):
            try:
                ec2.delete_launch_template(LaunchTemplateId=template["LaunchTemplateId"])
            except self._client_error as exc:
                if not _code(exc).endswith("NotFoundException"):
                    raise

    def _describe(self, region: str, name: str) -> dict[str, Any] | None:
        groups = self.client("autoscaling", region).describe_auto_scaling_groups(
            AutoScalingGroupNames=[name]
        )["AutoScalingGroups"]
        return groups[0] if groups else None

    def _find(self, name: str) -> tuple[str, dict[str, Any]] | None:
        for region in self._regions():
            group = self._describe(region, name)
            if group is not None:
                return region, group
        return None

    def _owned_groups(self, region: str) -> list[dict[str, Any]]:
        paginator = self.client("autoscaling", region).get_paginator("describe_auto_scaling_groups")
        ours = [{"Name": f"tag:{TAG_INSTALLATION}", "Values": [self.settings.installation_id]}]
        return [g for page in paginator.paginate(Filters=ours) for g in page["AutoScalingGroups"]]

    def _templates(self, region: str, key: str, value: str | None = None) -> list[dict[str, Any]]:
        value = self.settings.installation_id if value is None else value
        ours = [{"Name": f"tag:{key}", "Values": [value]}]
        if key != TAG_INSTALLATION:
            ours.append(
                {"Name": f"tag:{TAG_INSTALLATION}", "Values": [self.settings.installation_id]}
            )
        paginator = self.client("ec2", region).get_paginator("describe_launch_templates")
        return [t for page in paginator.paginate(Filters=ours) for t in page["LaunchTemplates"]]

    def _state(
        self, region: str, group: dict[str, Any], failures: tuple[ShapeFailure, ...] = ()
    ) -> NodeGroup:
        tags = {t["Key"]: t["Value"] for t in group.get("Tags", [])}
        return NodeGroup(
            name=group["AutoScalingGroupName"],
            cloud="aws",
            region=region,
            instance_type=tags.get(TAG_INSTANCE_TYPE, ""),
            desired=group["DesiredCapacity"],
            running=_live(group),
            tags=tags,
            failures=failures,
        )

    def _regions(self) -> tuple[str, ...]:
        return self.settings.regions


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _tag(resource: dict[str, Any], key: str) -> str:
    return next((t["Value"] for t in resource.get("Tags", []) if t["Key"] == key), "")


def _live(group: dict[str, Any]) -> int:
    return sum(1 for i in group.get("Instances", []) if i["LifecycleState"] not in _GONE)
