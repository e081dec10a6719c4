"""The Compute Engine calls GCP node groups make, with their long-running operations driven
by hand: `ComputeApi` gets, lists, inserts, resizes and deletes regional instance templates
and managed instance groups of one project, each mutating call under a request id and
waited for until its operation is DONE.

Every insert, resize and delete returns an `Operation` at once (`*_unary`); the work is done
when a poll of the region's operations says `DONE`, and it failed when the DONE operation
holds `error.errors` (`OperationFailed`). The SDK's own poller is not used: it builds its
operations client without our `client_options`, so it would poll the real API instead of
the configured one.

A request id is a UUID that GCP de-duplicates on: a request sent again with the same id is
answered with the first request's operation and has no second effect, so a call that timed
out or lost its answer is resent (`is_transient`). Ids are derived (uuid5) from the resource,
the verb, the body and the server state the request was decided on, never random: a retry,
even from a restarted control plane, sends the same id. Because GCP remembers ids for a
while, a later request that must act again (re-create after a release, resize back to an
earlier size) has to differ: ids include the state that changed in between (a resource's own
id, a fingerprint) and, when GCP still answers with an old operation, that operation's id.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from deploy.clouds.base import TAG_INSTALLATION, CloudCredentialsError, NodeGroupError
from deploy.clouds.gcp_failures import CAPACITY_REASONS
from deploy.clouds.gcp_settings import GcpSettings, digest, read_tags

_NAMESPACE = uuid.UUID("0b6f3f39-6c1e-5d8a-9a43-6d6f65736572")  # fixed: ids must not drift
_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
_FIRST_DELAY_S = 0.25
_MAX_DELAY_S = 5.0
_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
_CLIENTS = {
    "templates": "RegionInstanceTemplatesClient",
    "groups": "RegionInstanceGroupManagersClient",
    "operations": "RegionOperationsClient",
    "projects": "ProjectsClient",
}
# kind → (the request's name field, the insert's body field, the REST collection)
_KINDS = {
    "templates": (
        "instance_template",
        "instance_template_resource",
        "instanceTemplates",
    ),
    "groups": (
        "instance_group_manager",
        "instance_group_manager_resource",
        "instanceGroupManagers",
    ),
}
_LAUNCHED = {"PROVISIONING", "STAGING", "RUNNING"}  # an instance exists and is not stopping
_LEAVING = {"ABANDONING", "DELETING"}


def request_id(*parts: object) -> str:
    """The request id of the request described by `parts` (resource path, verb, body digest,
    the state it was based on)."""
    return str(uuid.uuid5(_NAMESPACE, "\0".join(str(p) for p in parts)))


def is_transient(exc: BaseException) -> bool:
    """Whether a failed mutating call may be resent (with the same request id): the
    connection broke or GCP was briefly unavailable. A capacity answer is final."""
    status = getattr(exc, "code", None)
    if isinstance(status, int) and status in _TRANSIENT_STATUS:
        reasons = {str(e.get("reason", "")) for e in getattr(exc, "errors", None) or ()}
        return not reasons & CAPACITY_REASONS
    return isinstance(exc, OSError)  # requests' ConnectionError and Timeout are OSErrors


class OperationFailed(NodeGroupError):
    """A long-running operation ended with errors; `errors` holds GCP's (code, message)."""

    def __init__(self, operation: str, target: str, errors: list[tuple[str, str]]) -> None:
        self.operation = operation
        self.errors = errors
        words = "; ".join(f"{code}: {message}" for code, message in errors)
        super().__init__(f"GCP operation {operation} on {target} failed: {words}")


def is_done(operation: Any) -> bool:
    status = operation.status
    return str(getattr(status, "name", status)) == "DONE"


def wait_done(
    operation: Any,
    poll: Callable[[str], Any],
    timeout_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> Any:
    """Poll `operation` (by name, with `poll`) until it is DONE and return it; raise
    `OperationFailed` when it ended with errors. Polls at once, then backs off."""
    deadline = time.monotonic() + timeout_s
    delay = _FIRST_DELAY_S
    while not is_done(operation):
        if time.monotonic() > deadline:
            raise NodeGroupError(
                f"GCP operation {operation.name} on {operation.target_link} was not done "
                f"after {timeout_s:g} s"
            )
        operation = poll(operation.name)
        if not is_done(operation):
            sleep(delay)
            delay = min(delay * 2, _MAX_DELAY_S)
    errors = [(e.code, e.message) for e in operation.error.errors]
    if errors:
        raise OperationFailed(operation.name, operation.target_link, errors)
    return operation


class ComputeApi:
    """Regional templates and MIGs of one project through google-cloud-compute (REST)."""

    def __init__(self, settings: GcpSettings, credentials: Any = None) -> None:
        try:
            import google.auth
            import google.auth.exceptions
            from google.api_core import exceptions, retry
            from google.api_core.client_options import ClientOptions
            from google.cloud import compute_v1
        except ImportError as exc:
            raise NodeGroupError(
                "the gcp provider needs google-cloud-compute: pip install 'moeserve[gcp]'"
            ) from exc
        self.settings = settings
        self._compute: Any = compute_v1
        self._auth: Any = google.auth
        self._credentials = credentials
        self.auth_error: type[Exception] = google.auth.exceptions.GoogleAuthError
        self.api_error: type[Exception] = exceptions.GoogleAPICallError
        self._not_found: type[Exception] = exceptions.NotFound
        self._conflict: type[Exception] = exceptions.Conflict
        # Mutating calls are resent on transient errors: their request id makes that safe.
        self._retry = retry.Retry(predicate=is_transient, initial=0.2, maximum=5.0, timeout=120)
        endpoint = settings.api_endpoint
        self._options = None if endpoint is None else ClientOptions(api_endpoint=endpoint)
        self._clients: dict[str, Any] = {}

    def client(self, kind: str) -> Any:
        """The SDK client of `kind`: templates, groups, operations or projects."""
        if kind not in self._clients:
            self._clients[kind] = getattr(self._compute, _CLIENTS[kind])(
                credentials=self.credentials(), transport="rest", client_options=self._options
            )
        return self._clients[kind]

    def credentials(self) -> Any:
        """The credentials given, else Application Default Credentials."""
        if self._credentials is None:
            try:
                self._credentials, _ = self._auth.default(scopes=_SCOPES)
            except self._auth.exceptions.DefaultCredentialsError as exc:
                raise CloudCredentialsError(
                    "no GCP credentials found: set GOOGLE_APPLICATION_CREDENTIALS to a service "
                    "account key file, run `gcloud auth application-default login`, or give "
                    "the control plane a service account (GCE metadata, GKE workload identity)"
                ) from exc
        return self._credentials

    def project(self) -> Any:
        return self.client("projects").get(project=self.settings.project)

    def get(self, kind: str, region: str, name: str) -> Any | None:
        request = {"project": self.settings.project, "region": region, _KINDS[kind][0]: name}
        try:
            return self.client(kind).get(request=request)
        except self._not_found:
            return None

    def listed(self, kind: str, region: str) -> list[Any]:
        """This installation's templates or groups in `region`: narrowed by name on GCP's
        side, then kept by the exact installation tag (an installation whose id starts with
        ours has names that start with ours too)."""
        installation = self.settings.installation_id
        ours = f'name eq "moeserve-{installation}-.*"'
        request = {"project": self.settings.project, "region": region, "filter": ours}
        found = self.client(kind).list(request=request)
        return [r for r in found if read_tags(r.description).get(TAG_INSTALLATION) == installation]

    def insert(self, kind: str, region: str, body: dict[str, Any], basis: str) -> Any:
        """Insert `body` and return the resource; `409 alreadyExists` means an earlier
        attempt made it. When GCP answers with an earlier operation of the same request id
        whose resource is gone since, the insert is sent again under an id derived from
        that operation."""
        name, field = body["name"], _KINDS[kind][1]
        body_digest = digest(json.dumps(body, sort_keys=True), 16)
        salt = ""
        for _ in range(2):
            rid = request_id("insert", self._path(kind, region, name), body_digest, basis, salt)
            request = {"project": self.settings.project, "region": region, field: body}
            try:
                operation = self._run(region, self.client(kind).insert_unary, request, rid)
            except self._conflict:
                operation = None
            created = self.get(kind, region, name)
            if created is not None:
                return created
            salt = "conflict" if operation is None else str(operation.id)
        raise NodeGroupError(f"GCP accepted {kind} {name} in {region} but does not show it")

    def resize(self, region: str, group: Any, count: int) -> Any:
        """Set the group's target size and return the group; `OperationFailed` when GCP
        refuses (the group stays as it was)."""
        path = self._path("groups", region, group.name)
        basis = f"{group.id}:{group.target_size}:{group.fingerprint}"
        request = {
            "project": self.settings.project,
            "region": region,
            "instance_group_manager": group.name,
            "size": count,
        }
        salt = ""
        for _ in range(2):
            rid = request_id("resize", path, count, basis, salt)
            operation = self._run(region, self.client("groups").resize_unary, request, rid)
            updated = self.get("groups", region, group.name)
            if updated is None:
                raise NodeGroupError(f"GCP node group {group.name} vanished from {region}")
            if updated.target_size == count:
                return updated
            salt = str(operation.id)  # GCP answered with an earlier resize of the same id
        raise NodeGroupError(f"GCP did not resize {group.name} to {count}")

    def delete(self, kind: str, region: str, resource: Any) -> None:
        """Delete `resource`; one already gone is skipped."""
        request = {
            "project": self.settings.project,
            "region": region,
            _KINDS[kind][0]: resource.name,
        }
        # The resource's own id: a later resource of the same name gets a new request id.
        rid = request_id("delete", self._path(kind, region, resource.name), resource.id)
        try:
            self._run(region, self.client(kind).delete_unary, request, rid)
        except self._not_found:
            return

    def running(self, region: str, name: str) -> int:
        """Instances of the group that exist and are neither stopping nor leaving it."""
        request = {
            "project": self.settings.project,
            "region": region,
            "instance_group_manager": name,
        }
        return sum(
            1
            for i in self.client("groups").list_managed_instances(request=request)
            if i.instance_status in _LAUNCHED and i.current_action not in _LEAVING
        )

    def instance_errors(self, region: str, name: str) -> list[dict[str, str]]:
        """What the group reported for instances it failed to create or keep (`listErrors`)."""
        request = {
            "project": self.settings.project,
            "region": region,
            "instance_group_manager": name,
        }
        return [
            {"timestamp": e.timestamp, "code": e.error.code, "message": e.error.message}
            for e in self.client("groups").list_errors(request=request)
        ]

    def _run(self, region: str, call: Any, request: dict[str, Any], rid: str) -> Any:
        """Send a mutating request under request id `rid` and wait for its operation."""
        operation = call(request={**request, "request_id": rid}, retry=self._retry)
        operations = self.client("operations")

        def poll(name: str) -> Any:
            return operations.get(project=self.settings.project, region=region, operation=name)

        return wait_done(operation, poll, self.settings.operation_timeout_s)

    def _path(self, kind: str, region: str, name: str) -> str:
        return f"projects/{self.settings.project}/regions/{region}/{_KINDS[kind][2]}/{name}"
