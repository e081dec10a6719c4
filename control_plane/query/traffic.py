"""Which served entities answer a query: the traffic split, then the fallback order.

The first candidate is drawn by `traffic_config` weights. With `ai_gateway.fallback_config`
enabled, the other entities follow (heavier routes first; entities with 0% traffic last),
and a failure before the first token moves on to the next one — once.
"""

from __future__ import annotations

import random

from control_plane.endpoints.config import ServedEntity
from control_plane.errors import TemporarilyUnavailable
from control_plane.query.targets import QueryTarget

RETRY_AFTER_S = 5
MAX_ATTEMPTS = 2  # the chosen entity and one fallback


def candidates(target: QueryTarget) -> list[ServedEntity]:
    """The entities to try, in order: one drawn by the traffic split, then (fallback on)
    the next one."""
    config, endpoint_name = target.config, target.endpoint_name
    if config is None:
        raise TemporarilyUnavailable(
            f"endpoint {endpoint_name!r} is not ready yet; retry shortly",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    entities = {e.name: e for e in config.served_entities}
    weights = {r.served_entity_name: r.traffic_percentage for r in config.traffic_config.routes}
    live = [name for name, weight in weights.items() if weight > 0]
    if not live:
        raise TemporarilyUnavailable(
            f"endpoint {endpoint_name!r} routes no traffic (every route is 0%)",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    chosen = random.choices(live, weights=[weights[n] for n in live])[0]
    order = [chosen]
    if target.fallback_enabled:
        others = sorted((n for n in entities if n != chosen), key=lambda n: -weights.get(n, 0))
        order += others
    return [entities[name] for name in order[:MAX_ATTEMPTS]]
