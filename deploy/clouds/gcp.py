"""GCP node groups: one regional instance template and one regional managed instance group
(MIG) per served entity.

The template carries the shape (machine type with its built-in GPUs, boot image, the
start-up script as `startup-script` metadata, labels) and is named after the group and a
hash of its content (templates are immutable); the MIG keeps `target_size` instances of it
across the region's zones. Idempotency comes from deterministic names, a get before every
create, `409 alreadyExists` taken as "an earlier attempt made it", and a request id derived
from our own ids on every insert, resize and delete (`gcp_operations`), so a retried or
restarted `ensure` never doubles capacity. Ownership is read from the exact tags each
template and MIG carries in its description (`gcp_settings`).

google-cloud-compute is imported when a `GcpNodeGroups` is built, never at module import:
the control plane starts without it (`pip install 'moeserve[gcp]'`).
"""

from __future__ import annotations

from typing import Any

from deploy.catalog import Candidate
from deploy.clouds.base import (
    TAG_NODE_GROUP,
    CloudCredentialsError,
    NodeGroup,
    NodeGroupError,
    NodeGroupNotFound,
    NodeGroupSpec,
    ShapeFailure,
)
from deploy.clouds.failover import Existing, check_offered, ensure_with_failover
from deploy.clouds.gcp_failures import (
    failure_from_codes,
    failure_from_http,
    failure_from_instance_errors,
)
from deploy.clouds.gcp_operations import ComputeApi, OperationFailed
from deploy.clouds.gcp_settings import (
    TAG_INSTANCE_TYPE,
    GcpSettings,
    group_body,
    read_tags,
    template_body,
)

__all__ = ["GcpNodeGroups", "GcpSettings"]


class GcpNodeGroups:
    """`NodeGroups` on Compute Engine managed instance groups. Every method blocks on GCP."""

    def __init__(self, settings: GcpSettings, credentials: Any = None) -> None:
        self.settings = settings
        self.api = ComputeApi(settings, credentials)  # NodeGroupError without the SDK

    def client(self, kind: str) -> Any:
        """The SDK client of `kind` (templates, groups, operations, projects)."""
        return self.api.client(kind)

    def check_credentials(self) -> str:
        """Who the provider acts as, once GCP accepted a read of the project."""
        credentials = self.api.credentials()
        try:
            project = self.api.project()
        except (self.api.api_error, self.api.auth_error) as exc:
            raise CloudCredentialsError(
                f"GCP rejected the credentials for project {self.settings.project}: {exc}"
            ) from exc
        who = getattr(credentials, "service_account_email", None)
        return f"{who} in project {project.name}" if who else f"project {project.name}"

    # --- the NodeGroups protocol ---------------------------------------------------------

    def ensure(self, spec: NodeGroupSpec) -> NodeGroup:
        check_offered(
            spec,
            cloud="gcp",
            installation_id=self.settings.installation_id,
            configured=self.settings.regions,
            what="image",
        )
        found = self._find(spec.name)
        existing = None
        if found is not None:
            region, group = found
            running = self.api.running(region, spec.name)
            existing = Existing(
                region,
                _machine_type(group),
                self._launch_failure(region, group, running),
                keep=lambda: self._converge(spec, region, group, running),
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
            raise NodeGroupNotFound(f"no GCP node group {name} in {', '.join(self._regions())}")
        region, group = found
        return self._state(region, self._resize(region, group, count))

    def release(self, name: str) -> None:
        for region in self._regions():
            self._release_in(region, name)

    def list_owned(self) -> list[NodeGroup]:
        owned = [self._state(r, g) for r in self._regions() for g in self.api.listed("groups", r)]
        return sorted(owned, key=lambda g: (g.region, g.name))

    def sweep_orphans(self, owned_names: set[str]) -> list[str]:
        """Groups, and templates left without a group (a crash between the two creates), of
        this installation that no endpoint owns."""
        released: set[str] = set()
        for region in self._regions():
            found = [*self.api.listed("groups", region), *self.api.listed("templates", region)]
            names = {read_tags(r.description).get(TAG_NODE_GROUP, "") for r in found}
            for name in sorted(names - owned_names - {""}):
                self._release_in(region, name)
                released.add(name)
        return sorted(released)

    # --- one region ------------------------------------------------------------------------

    def _create(self, spec: NodeGroupSpec, candidate: Candidate) -> NodeGroup | ShapeFailure:
        failure = self._try_create(spec, candidate)
        if failure is not None:
            return failure
        created = self.api.get("groups", candidate.region, spec.name)
        assert created is not None, "a group just created is described"
        return self._state(candidate.region, created)

    def _try_create(self, spec: NodeGroupSpec, candidate: Candidate) -> ShapeFailure | None:
        """Create template and group for one shape; the refusal when GCP refuses it."""
        region, machine_type = candidate.region, candidate.name
        try:
            body = template_body(self.settings, spec, candidate)
            template = self.api.get("templates", region, body["name"])
            if template is None:
                template = self.api.insert("templates", region, body, "")
            if self.api.get("groups", region, spec.name) is None:
                # The template's id is new in every life of the name: a request id of an
                # earlier life (released since) is not taken for this one.
                group = group_body(self.settings, spec, candidate, template.self_link)
                self.api.insert("groups", region, group, str(template.id))
        except (OperationFailed, self.api.api_error) as exc:
            failure = _refusal(exc, region, machine_type)
            if failure is None:
                raise
            return failure
        created = self.api.get("groups", region, spec.name)
        return None if created is None else self._launch_failure(region, created)

    def _converge(self, spec: NodeGroupSpec, region: str, group: Any, running: int) -> NodeGroup:
        if group.target_size != spec.count:
            return self._state(region, self._resize(region, group, spec.count))
        return self._state(region, group, running=running)

    def _resize(self, region: str, group: Any, count: int) -> Any:
        """The resized group; a refusal is an error in GCP's words (the group stays)."""
        try:
            return self.api.resize(region, group, count)
        except (OperationFailed, self.api.api_error) as exc:
            failure = _refusal(exc, region, _machine_type(group))
            if failure is None:
                raise
            raise NodeGroupError(
                f"GCP refused to resize {group.name} to {count}: {failure.describe()}"
            ) from exc

    def _launch_failure(
        self, region: str, group: Any, running: int | None = None
    ) -> ShapeFailure | None:
        """A capacity refusal that left the group without instances; a group that runs some
        keeps them (its state says how many are missing)."""
        if running is None:
            running = self.api.running(region, group.name)
        if group.target_size == 0 or running > 0:
            return None
        return failure_from_instance_errors(
            self.api.instance_errors(region, group.name),
            group.creation_timestamp,
            region,
            _machine_type(group),
        )

    def _release_in(self, region: str, name: str) -> None:
        """Delete the group (and so its instances), then its templates; what is already gone
        is skipped. The group goes first: GCP refuses to delete a template in use."""
        group = self.api.get("groups", region, name)
        if group is not None:
            self.api.delete("groups", region, group)
        for template in self.api.listed("templates", region):
            if read_tags(template.description).get(TAG_NODE_GROUP) == name:
                self.api.delete("templates", region, template)

    def _find(self, name: str) -> tuple[str, Any] | None:
        for region in self._regions():
            group = self.api.get("groups", region, name)
            if group is not None:
                return region, group
        return None

    def _state(
        self,
        region: str,
        group: Any,
        failures: tuple[ShapeFailure, ...] = (),
        running: int | None = None,
    ) -> NodeGroup:
        return NodeGroup(
            name=group.name,
            cloud="gcp",
            region=region,
            instance_type=_machine_type(group),
            desired=group.target_size,
            running=self.api.running(region, group.name) if running is None else running,
            tags=read_tags(group.description),
            failures=failures,
        )

    def _regions(self) -> tuple[str, ...]:
        return self.settings.regions


def _refusal(exc: Exception, region: str, machine_type: str) -> ShapeFailure | None:
    """The capacity or quota refusal `exc` reports: an operation's or an HTTP error's."""
    if isinstance(exc, OperationFailed):
        return failure_from_codes(exc.errors, region, machine_type)
    errors = getattr(exc, "errors", None) or ()
    return failure_from_http(errors, str(getattr(exc, "message", exc)), region, machine_type)


def _machine_type(group: Any) -> str:
    return read_tags(group.description).get(TAG_INSTANCE_TYPE, "")
