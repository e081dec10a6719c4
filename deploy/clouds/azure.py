"""Azure node groups: one Virtual Machine Scale Set per served entity.

The scale set is named `spec.name` in the configured resource group and carries the shape
itself (VM size, image, start-up script), so there is one resource per group and never a
second one to leave behind. Failing over to another shape deletes the scale set and PUTs a
new one of the same name with the other size (and perhaps region): the name stays the one
thing a restarted control plane needs to find the group, `scale` and `release` need no shape,
and at most one scale set per entity ever exists. (Changing `sku.name` in place is not an
option: with a Manual upgrade policy the running instances would keep the refused size.)

Idempotency comes from ARM itself: a PUT on a deterministic name is create-or-update, a
DELETE of a missing resource succeeds, and every `ensure` GETs the group before it PUTs.
Long-running operations are waited for with the SDK's pollers; a capacity or quota refusal,
at once or as a failed operation, releases the scale set and tries the next candidate.

azure-mgmt-compute and azure-identity are imported when an `AzureNodeGroups` is built, never
at module import: the control plane starts without them (`pip install 'moeserve[azure]'`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from deploy.catalog import Candidate
from deploy.clouds.azure_failures import failure_from_error, failure_from_statuses
from deploy.clouds.azure_scale_sets import TAG_INSTANCE_TYPE, scale_set_body, throwaway_ssh_key
from deploy.clouds.azure_settings import AzureSettings
from deploy.clouds.base import (
    TAG_INSTALLATION,
    CloudCredentialsError,
    NodeGroup,
    NodeGroupError,
    NodeGroupNotFound,
    NodeGroupSpec,
    ShapeFailure,
    ShapeNotOffered,
)
from deploy.clouds.failover import Existing, check_offered, ensure_with_failover

__all__ = ["AzureNodeGroups", "AzureSettings"]
ARM_SCOPE = "https://management.azure.com/.default"
_GONE = {"Deleting", "Failed"}  # VM provisioning states of instances that do not serve
_NO_CREDENTIALS = (
    "no Azure credentials found: set AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET "
    "(a service principal), or give the control plane a managed identity (workload identity "
    "on AKS)"
)


class AzureNodeGroups:
    """`NodeGroups` on Azure Virtual Machine Scale Sets. Every method blocks on Azure.

    `credential` is any azure-core `TokenCredential` (default: `DefaultAzureCredential`:
    environment, workload identity, managed identity, Azure CLI, ...). `polling_interval` is
    the seconds between polls of a long-running operation when Azure sends no Retry-After
    (default: the SDK's; tests use 0)."""

    def __init__(
        self,
        settings: AzureSettings,
        credential: Any = None,
        *,
        polling_interval: float | None = None,
    ) -> None:
        try:
            from azure.core.exceptions import (
                ClientAuthenticationError,
                HttpResponseError,
                ResourceNotFoundError,
            )
            from azure.mgmt.compute import ComputeManagementClient

            if credential is None:
                from azure.identity import DefaultAzureCredential

                credential = DefaultAzureCredential()
        except ImportError as exc:
            raise NodeGroupError(
                "the azure provider needs azure-mgmt-compute and azure-identity: "
                "pip install 'moeserve[azure]'"
            ) from exc
        self.settings = settings
        self.credential = credential
        self._auth_error: type[Exception] = ClientAuthenticationError
        self._http_error: type[Exception] = HttpResponseError
        self._not_found: type[Exception] = ResourceNotFoundError
        self._polling: dict[str, Any] = (
            {} if polling_interval is None else {"polling_interval": polling_interval}
        )
        options: dict[str, Any] = {}
        if settings.base_url is not None and settings.base_url.startswith("http://"):
            options["per_call_policies"] = [_plain_http_policy()]
        self.client: Any = ComputeManagementClient(
            credential, settings.subscription_id, base_url=settings.base_url, **options
        )
        self._ssh_key = settings.ssh_public_key

    def check_credentials(self) -> str:
        """Where the provider acts (subscription, resource group), once its credential gave a
        token and Azure accepted it for a cheap call (listing the resource group's scale sets);
        `CloudCredentialsError` saying what to set when there is no credential or it is refused."""
        try:
            self.credential.get_token(ARM_SCOPE)
        except self._auth_error as exc:
            raise CloudCredentialsError(f"{_NO_CREDENTIALS}: {exc}") from exc
        where = (
            f"subscription {self.settings.subscription_id}, "
            f"resource group {self.settings.resource_group}"
        )
        try:
            count = sum(1 for _ in self._scale_sets.list(self.settings.resource_group))
        except self._http_error as exc:
            raise CloudCredentialsError(f"Azure refused access to {where}: {exc}") from exc
        return f"{where} ({count} scale sets)"

    # --- the NodeGroups protocol ---------------------------------------------------------

    def ensure(self, spec: NodeGroupSpec) -> NodeGroup:
        self._check_offered(spec)
        found = self._get(spec.name)
        if found is not None and _provisioning(found) == "Deleting":
            self.release(spec.name)  # a release that died mid-way: finish it, then create
            found = None
        existing = None
        if found is not None:
            group = found
            existing = Existing(
                group["location"],
                _size(group),
                self._launch_failure(group),
                keep=lambda: self._converge(group, spec.count),
            )
        # Scale set names are unique in the resource group whatever the region.
        return ensure_with_failover(
            spec,
            existing,
            create=lambda candidate: self._create(spec, candidate),
            release=lambda _region: self.release(spec.name),
        )

    def scale(self, name: str, count: int) -> NodeGroup:
        if count < 0:
            raise ValueError(f"a node count is never negative, got {count}")
        group = self._get(name)
        if group is None:
            raise NodeGroupNotFound(
                f"no Azure node group {name} in resource group {self.settings.resource_group}"
            )
        return self._converge(group, count)

    def release(self, name: str) -> None:
        """Delete the scale set with its VMs, NICs and disks; ARM answers a DELETE of a
        missing resource with success, so a second release is a no-op."""
        with contextlib.suppress(self._not_found):
            self._scale_sets.begin_delete(
                self.settings.resource_group, name, **self._polling
            ).result()

    def list_owned(self) -> list[NodeGroup]:
        return sorted((self._state(g) for g in self._owned()), key=lambda g: (g.region, g.name))

    def sweep_orphans(self, owned_names: set[str]) -> list[str]:
        """Scale sets of this installation (a kill between the PUT and its end leaves one
        like any other) that no endpoint owns."""
        orphans = sorted({str(g["name"]) for g in self._owned()} - owned_names)
        for name in orphans:
            self.release(name)
        return orphans

    # --- one scale set -----------------------------------------------------------------------

    @property
    def _scale_sets(self) -> Any:
        return self.client.virtual_machine_scale_sets

    def _create(self, spec: NodeGroupSpec, candidate: Candidate) -> NodeGroup | ShapeFailure:
        outcome = self._try_create(spec, candidate)
        return outcome if isinstance(outcome, ShapeFailure) else self._state(outcome)

    def _try_create(
        self, spec: NodeGroupSpec, candidate: Candidate
    ) -> Mapping[str, Any] | ShapeFailure:
        """PUT the scale set of one shape and wait for it: the scale set as the operation's
        final GET returns it, or the refusal when Azure refuses it (at once, or as the failed
        end of the operation)."""
        if self._ssh_key is None:
            self._ssh_key = throwaway_ssh_key()
        body = scale_set_body(self.settings, spec, candidate, self._ssh_key)
        try:
            created: Mapping[str, Any] = self._scale_sets.begin_create_or_update(
                self.settings.resource_group, spec.name, body, **self._polling
            ).result()
        except self._http_error as exc:
            failure = failure_from_error(_error_of(exc), candidate.region, candidate.name)
            if failure is None:
                raise
            return failure
        failure = self._launch_failure(created)
        return created if failure is None else failure

    def _converge(self, group: Mapping[str, Any], count: int) -> NodeGroup:
        """Set the capacity when it differs. A refusal to grow keeps the group and what it
        runs; the refusal is its state message."""
        if group["sku"]["capacity"] == count:
            return self._state(group)
        sku = {
            "name": _size(group),
            "tier": group["sku"].get("tier", "Standard"),
            "capacity": count,
        }
        try:
            updated = self._scale_sets.begin_update(
                self.settings.resource_group, group["name"], {"sku": sku}, **self._polling
            ).result()
        except self._http_error as exc:
            failure = failure_from_error(_error_of(exc), group["location"], _size(group))
            if failure is None:
                raise
            return self._state(self._get(group["name"]) or group, (failure,))
        return self._state(updated)

    def _launch_failure(self, group: Mapping[str, Any]) -> ShapeFailure | None:
        """A capacity refusal that left the scale set Failed without instances; one that runs
        some keeps them (its state message says why the rest are missing)."""
        failed = _provisioning(group) == "Failed"
        if group["sku"]["capacity"] == 0 or not failed or self._running(group) > 0:
            return None
        view = self._scale_sets.get_instance_view(self.settings.resource_group, group["name"])
        return failure_from_statuses(view.get("statuses") or [], group["location"], _size(group))

    def _get(self, name: str) -> Mapping[str, Any] | None:
        try:
            found: Mapping[str, Any] = self._scale_sets.get(self.settings.resource_group, name)
        except self._not_found:
            return None
        return found

    def _owned(self) -> list[Mapping[str, Any]]:
        ours = self.settings.installation_id
        return [
            g
            for g in self._scale_sets.list(self.settings.resource_group)
            if (g.get("tags") or {}).get(TAG_INSTALLATION) == ours
        ]

    def _running(self, group: Mapping[str, Any]) -> int:
        vms = self.client.virtual_machine_scale_set_vms.list(
            self.settings.resource_group, group["name"]
        )
        return sum(
            1 for vm in vms if vm.get("properties", {}).get("provisioningState") not in _GONE
        )

    def _state(
        self, group: Mapping[str, Any], failures: tuple[ShapeFailure, ...] = ()
    ) -> NodeGroup:
        return NodeGroup(
            name=group["name"],
            cloud="azure",
            region=group["location"],
            instance_type=_size(group),
            desired=group["sku"]["capacity"],
            running=self._running(group),
            tags=dict(group.get("tags") or {}),
            failures=failures,
        )

    def _check_offered(self, spec: NodeGroupSpec) -> None:
        check_offered(
            spec,
            cloud="azure",
            installation_id=self.settings.installation_id,
            configured=self.settings.regions,
            what="image",
        )
        for candidate in spec.candidates:
            if candidate.region not in self.settings.subnet_ids:
                raise ShapeNotOffered(f"region {candidate.region} has no subnet configured")


def _size(group: Mapping[str, Any]) -> str:
    tags = group.get("tags") or {}
    return str(tags.get(TAG_INSTANCE_TYPE) or group["sku"]["name"])


def _provisioning(group: Mapping[str, Any]) -> str:
    return str((group.get("properties") or {}).get("provisioningState") or "")


def _error_of(exc: Any) -> Mapping[str, Any]:
    """The ARM error object of a refused request or of a failed operation's last poll (both
    bodies carry it under `error`), else what azure-core parsed of it."""
    try:
        body = exc.response.json() if exc.response is not None else None
    except ValueError:
        body = None
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        error: Mapping[str, Any] = body["error"]
        return error
    parsed = getattr(exc, "error", None)
    return {
        "code": getattr(parsed, "code", None) or "",
        "message": getattr(parsed, "message", None) or str(exc),
    }


def _plain_http_policy() -> Any:
    """Test-only: a fake Resource Manager on http://127.0.0.1. azure-core refuses to send a
    bearer token over plain http unless the request's context says `enforce_https` False;
    this per-call policy says so, and is installed only for an http:// `base_url`."""
    from azure.core.pipeline import PipelineRequest
    from azure.core.pipeline.policies import SansIOHTTPPolicy

    class AllowPlainHttp(SansIOHTTPPolicy[Any, Any]):
        def on_request(self, request: PipelineRequest[Any]) -> None:
            request.context["enforce_https"] = False

    return AllowPlainHttp()
