"""Valid typed endpoint configs and query targets for tests of the code that reads them
(planner, traffic split, prompt tokenization), with only the fields a test cares about
given."""

from __future__ import annotations

from typing import Any

from control_plane.endpoints.ai_gateway import AiGatewayConfig, FallbackConfig
from control_plane.endpoints.config import (
    EndpointConfig,
    Route,
    ServedEntity,
    Task,
    TrafficConfig,
)
from control_plane.query.targets import QueryTarget
from tests.control_plane.ratelimit_support import make_caller
from workers.model.source import ModelSource


def served_entity(name: str = "e", app_name: str | None = None, **fields: Any) -> ServedEntity:
    values: dict[str, Any] = {
        "name": name,
        "entity_name": "dbrx-tiny",
        "entity_version": "1",
        "workload_type": "CPU",
        "creator": "tester",
        "creation_timestamp": 0,
        "model_family": "dbrx",
        "model_source": ModelSource(preset="dbrx-tiny"),
        "app_name": app_name or f"ms-ep-{name}",
        "min_replicas": 1,
        "max_replicas": 1,
    }
    values.update(fields)
    return ServedEntity.model_validate(values)


def endpoint_config(
    *entities: ServedEntity, version: int = 1, weights: dict[str, int] | None = None
) -> EndpointConfig:
    """A config serving `entities`; traffic by `weights` (default: all on the first)."""
    weights = weights or {entities[0].name: 100}
    routes = [Route(served_entity_name=n, traffic_percentage=w) for n, w in weights.items()]
    return EndpointConfig(
        config_version=version,
        served_entities=list(entities),
        traffic_config=TrafficConfig(routes=routes),
        start_time=0,
    )


def query_target(config: EndpointConfig | None, *, fallback: bool = False) -> QueryTarget:
    """A resolved query target of endpoint "e" serving `config`."""
    return QueryTarget(
        caller=make_caller("ana@example.com", 7),
        endpoint_id="ep",
        endpoint_name="e",
        workspace_id="w",
        task=Task.CHAT,
        config=config,
        ai_gateway=AiGatewayConfig(fallback_config=FallbackConfig(enabled=fallback)),
        rules=(),
    )
