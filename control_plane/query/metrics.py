"""Prometheus metrics of the query path, in a registry owned by one app (not global).

Every series of an endpoint is keyed by the endpoint's id, never its name (two workspaces
may each have an endpoint `chat`), and labelled `workspace`, `endpoint_id` and `endpoint`
(the name, for reading). `/metrics` (the operator's view) exposes the whole registry;
`/api/2.0/serving-endpoints/{name}/metrics` exposes the samples of the endpoint that name
resolves to in the caller's workspace, selected by its id (`endpoint_text`).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.registry import Collector

from control_plane.endpoints.metrics import SHARED_WORKSPACE, EndpointLabels

_ENDPOINT = list(EndpointLabels._fields)  # workspace, endpoint_id, endpoint
_ENTITY = [*_ENDPOINT, "served_entity"]
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


@dataclass(frozen=True)
class EntitySeries:
    ttft: Histogram
    inter_token: Histogram
    e2e: Histogram
    input_tokens: Counter
    output_tokens: Counter
    queue_depth: Gauge


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "moeserve_requests",
            "accepted queries by final HTTP status",
            [*_ENTITY, "status"],
            registry=r,
        )
        self.ttft = Histogram(
            "moeserve_time_to_first_token_seconds",
            "request accepted -> first token sent",
            _ENTITY,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token = Histogram(
            "moeserve_inter_token_latency_seconds",
            "gap between streamed chunks",
            _ENTITY,
            buckets=_ITL_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "moeserve_request_latency_seconds",
            "request accepted -> last byte",
            _ENTITY,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.input_tokens = Counter(
            "moeserve_input_tokens", "prompt tokens (engine count)", _ENTITY, registry=r
        )
        self.output_tokens = Counter(
            "moeserve_output_tokens", "generated tokens (engine count)", _ENTITY, registry=r
        )
        self.queue_depth = Gauge(
            "moeserve_gateway_in_flight_requests",
            "requests this process has sent to a served entity and not finished",
            _ENTITY,
            registry=r,
        )
        self.rate_limited = Counter(
            "moeserve_rate_limit_rejections",
            "queries rejected with 429 by an AI-gateway rate limit",
            [*_ENDPOINT, "key"],
            registry=r,
        )
        self.saturated = Counter(
            "moeserve_backpressure_rejections",
            "queries rejected because the served entity's queue was full",
            _ENTITY,
            registry=r,
        )
        self.guardrail_hits = Counter(
            "moeserve_guardrail_hits",
            "matches of an endpoint's AI-gateway guardrails (a keyword, a PII value), by "
            "direction (input, output), kind and action (BLOCK, MASK)",
            [*_ENDPOINT, "direction", "kind", "action"],
            registry=r,
        )
        self.fallbacks = Counter(
            "moeserve_fallbacks",
            "queries retried on another served entity before the first token",
            _ENTITY,
            registry=r,
        )
        self.wakes = Counter(
            "moeserve_scale_from_zero_wakes",
            "queries that found the served entity parked and woke it",
            _ENTITY,
            registry=r,
        )
        self.replicas = Gauge(
            "moeserve_served_entity_replicas", "running replicas", _ENTITY, registry=r
        )
        self.running_seqs = Gauge(
            "moeserve_engine_running_requests",
            "requests in the sampled replica's engine",
            _ENTITY,
            registry=r,
        )
        self.kv_usage = Gauge(
            "moeserve_engine_kv_cache_usage_ratio",
            "used KV-cache blocks / all blocks in the sampled replica",
            _ENTITY,
            registry=r,
        )

        self._series: dict[tuple[EndpointLabels, str], EntitySeries] = {}

    def series(self, labels: EndpointLabels, entity: str) -> EntitySeries:
        """The per-entity children, looked up once (label lookups lock and hash)."""
        key = (labels, entity)
        found = self._series.get(key)
        if found is None:
            values = (*labels, entity)
            found = self._series[key] = EntitySeries(
                ttft=self.ttft.labels(*values),
                inter_token=self.inter_token.labels(*values),
                e2e=self.e2e.labels(*values),
                input_tokens=self.input_tokens.labels(*values),
                output_tokens=self.output_tokens.labels(*values),
                queue_depth=self.queue_depth.labels(*values),
            )
        return found

    def text(self) -> bytes:
        return generate_latest(self.registry)

    def endpoint_text(self, endpoint_id: str, workspace: str) -> str:
        """The samples of one endpoint as `workspace` may see them, in the Prometheus text
        format: those of its id, either the workspace's own or the endpoint's gauges
        (`SHARED_WORKSPACE`; on a shared endpoint, the other tenants' traffic is left out)."""
        view = _EndpointView(self.registry, endpoint_id, (workspace, SHARED_WORKSPACE))
        return generate_latest(view).decode()


class _EndpointView(Collector):
    def __init__(
        self, registry: CollectorRegistry, endpoint_id: str, workspaces: tuple[str, ...]
    ) -> None:
        self._registry = registry
        self._endpoint_id = endpoint_id
        self._workspaces = workspaces

    def collect(self):  # type: ignore[no-untyped-def]
        for family in self._registry.collect():
            samples = [
                s
                for s in family.samples
                if s.labels.get("endpoint_id") == self._endpoint_id
                and s.labels.get("workspace") in self._workspaces
            ]
            if samples:
                family.samples = samples
                yield family
