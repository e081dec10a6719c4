"""Wire shapes of endpoints (`ServingEndpointDetailed`, list summaries) from stored rows."""

from __future__ import annotations

from typing import Any

from control_plane.db.models import Endpoint
from control_plane.ids import to_millis

# Stored with each entity for the reconciler; not part of the Databricks wire shape.
_INTERNAL = {
    "model_source",
    "model_family",
    "app_name",
    "min_replicas",
    "max_replicas",
    "provisioned_chunks",
}
CREATING = {"deployment": "DEPLOYMENT_CREATING", "deployment_state_message": "Creating"}


def entity_state(endpoint: Endpoint, entity: dict[str, Any]) -> dict[str, str]:
    return dict(endpoint.deployments.get(entity["app_name"], CREATING))


def _entity(endpoint: Endpoint, entity: dict[str, Any]) -> dict[str, Any]:
    public = {k: v for k, v in entity.items() if k not in _INTERNAL and v is not None}
    public["state"] = entity_state(endpoint, entity)
    return public


def config_view(endpoint: Endpoint, config: dict[str, Any], *, pending: bool) -> dict[str, Any]:
    view: dict[str, Any] = {
        "config_version": config["config_version"],
        "served_entities": [_entity(endpoint, e) for e in config["served_entities"]],
        "traffic_config": config["traffic_config"],
    }
    if pending:
        view["start_time"] = config["start_time"]
    return view


def state_view(endpoint: Endpoint) -> dict[str, str]:
    return {"ready": endpoint.ready, "config_update": endpoint.config_update}


def _common(endpoint: Endpoint) -> dict[str, Any]:
    """Fields both the detailed view and the list summary carry."""
    return {
        "name": endpoint.name,
        "id": endpoint.id,
        "creator": endpoint.creator,
        "creation_timestamp": to_millis(endpoint.created_at),
        "last_updated_timestamp": to_millis(endpoint.updated_at),
        "state": state_view(endpoint),
        "tags": endpoint.tags,
        "task": endpoint.task,
        "description": endpoint.description,
    }


def detailed(endpoint: Endpoint, permission_level: str) -> dict[str, Any]:
    view: dict[str, Any] = {
        **_common(endpoint),
        "permission_level": permission_level,
        "route_optimized": endpoint.route_optimized,
    }
    if endpoint.config is not None:
        view["config"] = config_view(endpoint, endpoint.config, pending=False)
    if endpoint.pending_config is not None:
        view["pending_config"] = config_view(endpoint, endpoint.pending_config, pending=True)
    if endpoint.ai_gateway is not None:
        view["ai_gateway"] = endpoint.ai_gateway
    return view


def summary(endpoint: Endpoint) -> dict[str, Any]:
    view: dict[str, Any] = _common(endpoint)
    live = endpoint.config or endpoint.pending_config
    if live is not None:
        view["config"] = {
            "config_version": live["config_version"],
            "served_entities": [
                {
                    "name": e["name"],
                    "entity_name": e["entity_name"],
                    "entity_version": e["entity_version"],
                    "state": entity_state(endpoint, e),
                }
                for e in live["served_entities"]
            ],
        }
    if endpoint.ai_gateway is not None:
        view["ai_gateway"] = endpoint.ai_gateway
    return view
