"""Whose a metric series is (`EndpointLabels`, shared with the query path's series), and
the Prometheus text of one endpoint: its state and each served entity's replicas.

Every series of an endpoint is labelled `workspace`, `endpoint_id` and `endpoint` (the
name), and told apart by the id: two workspaces' endpoints of one name stay two series."""

from __future__ import annotations

from typing import NamedTuple

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from control_plane.db.models import Endpoint
from control_plane.endpoints.states import ConfigUpdate, Ready
from deploy.providers.base import AppStatus

SHARED_WORKSPACE = ""  # the `workspace` label of what no one workspace owns (see below)


class EndpointLabels(NamedTuple):
    """The label values that place a sample under one tenant's endpoint.

    `workspace` is the tenant: the endpoint's workspace, or for a shared (platform)
    endpoint `SHARED_WORKSPACE` — except its query traffic, which is labelled with the
    querying workspace, so that no tenant's traffic shows in another's view (see
    `QueryTarget.labels`). A tuple, not a dataclass: it hashes natively as a cache key and
    unpacks into `.labels(*labels, entity)` on the query path.
    """

    workspace: str
    endpoint_id: str
    endpoint: str  # the name, for reading; `endpoint_id` tells endpoints apart

    @classmethod
    def of(cls, workspace_id: str | None, endpoint_id: str, name: str) -> EndpointLabels:
        """An endpoint's own labels (its workspace, or `SHARED_WORKSPACE`)."""
        return cls(workspace_id or SHARED_WORKSPACE, endpoint_id, name)


_ENDPOINT = list(EndpointLabels._fields)


def endpoint_metrics(endpoint: Endpoint, apps: dict[str, AppStatus | None]) -> str:
    registry = CollectorRegistry()
    labels = EndpointLabels.of(endpoint.workspace_id, endpoint.id, endpoint.name)
    ready = Gauge(
        "moeserve_endpoint_ready", "1 when the endpoint serves", _ENDPOINT, registry=registry
    )
    ready.labels(*labels).set(1 if endpoint.ready == Ready.READY else 0)
    updating = Gauge(
        "moeserve_endpoint_config_updating",
        "1 while a config update rolls",
        _ENDPOINT,
        registry=registry,
    )
    updating.labels(*labels).set(1 if endpoint.config_update == ConfigUpdate.IN_PROGRESS else 0)
    version = Gauge(
        "moeserve_endpoint_config_version", "live config version", _ENDPOINT, registry=registry
    )
    version.labels(*labels).set(endpoint.config_version)
    replicas = Gauge(
        "moeserve_served_entity_running_replicas",
        "replicas running per served entity",
        [*_ENDPOINT, "served_entity"],
        registry=registry,
    )
    wanted = Gauge(
        "moeserve_served_entity_max_replicas",
        "replicas the served entity may scale to",
        [*_ENDPOINT, "served_entity"],
        registry=registry,
    )
    for entity in endpoint.config.served_entities if endpoint.config is not None else []:
        status = apps.get(entity.app_name)
        replicas.labels(*labels, entity.name).set(status.running_replicas if status else 0)
        wanted.labels(*labels, entity.name).set(entity.max_replicas)
    return generate_latest(registry).decode()
