"""Which served entity answers a query: traffic split by `traffic_config` weights."""

from __future__ import annotations

import random
from typing import Any

from control_plane.errors import TemporarilyUnavailable

RETRY_AFTER_S = 5


def pick_entity(config: dict[str, Any] | None, endpoint_name: str) -> dict[str, Any]:
    if config is None:
        raise TemporarilyUnavailable(
            f"endpoint {endpoint_name!r} is not ready yet; retry shortly",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    entities = {e["name"]: e for e in config["served_entities"]}
    routes = [r for r in config["traffic_config"]["routes"] if r["traffic_percentage"] > 0]
    weights = [r["traffic_percentage"] for r in routes]
    chosen = random.choices(routes, weights=weights)[0]
    return entities[chosen["served_entity_name"]]
