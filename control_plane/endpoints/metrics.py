"""Prometheus text for one endpoint: its state and each served entity's replicas."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from control_plane.db.models import Endpoint
from control_plane.endpoints.states import ConfigUpdate, Ready
from deploy.providers.base import AppStatus


def endpoint_metrics(endpoint: Endpoint, apps: dict[str, AppStatus | None]) -> str:
    registry = CollectorRegistry()
    ready = Gauge(
        "moeserve_endpoint_ready", "1 when the endpoint serves", ["endpoint"], registry=registry
    )
    ready.labels(endpoint.name).set(1 if endpoint.ready == Ready.READY else 0)
    updating = Gauge(
        "moeserve_endpoint_config_updating",
        "1 while a config update rolls",
        ["endpoint"],
        registry=registry,
    )
    updating.labels(endpoint.name).set(
        1 if endpoint.config_update == ConfigUpdate.IN_PROGRESS else 0
    )
    version = Gauge(
        "moeserve_endpoint_config_version", "live config version", ["endpoint"], registry=registry
    )
    version.labels(endpoint.name).set(endpoint.config_version)
    replicas = Gauge(
        "moeserve_served_entity_running_replicas",
        "replicas running per served entity",
        ["endpoint", "served_entity"],
        registry=registry,
    )
    wanted = Gauge(
        "moeserve_served_entity_max_replicas",
        "replicas the served entity may scale to",
        ["endpoint", "served_entity"],
        registry=registry,
    )
    for entity in endpoint.config.served_entities if endpoint.config is not None else []:
        status = apps.get(entity.app_name)
        labels = (endpoint.name, entity.name)
        replicas.labels(*labels).set(status.running_replicas if status else 0)
        wanted.labels(*labels).set(entity.max_replicas)
    return generate_latest(registry).decode()
