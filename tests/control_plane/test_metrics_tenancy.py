"""Metrics never mix tenants: two workspaces may each have an endpoint `chat`, and each
workspace's `GET /api/2.0/serving-endpoints/chat/metrics` shows its own endpoint's series
alone (selected by the endpoint's id), while the operator's `/metrics` shows both, told
apart by their `workspace` and `endpoint_id` labels (and a deleted endpoint's sampled
gauges go with it). Live: the control plane over the session's Ray, replicas running the
instant engine; the shared-endpoint case in process."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from control_plane.query.metrics import GatewayMetrics
from tests.control_plane.conftest import ADMIN_TOKEN, LiveServer, wait_for
from tests.control_plane.domain_factories import query_target
from tests.control_plane.query_fixtures import create_endpoint, instant_ray_server, openai_client
from tests.control_plane.test_tenancy import default_workspace, new_user, new_workspace

NAME = "chat"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
Series = tuple[str, str, str]  # workspace, endpoint_id, endpoint


@dataclasses.dataclass(frozen=True)
class Tenant:
    workspace: str
    token: str
    endpoint_id: str

    @property
    def series(self) -> Series:
        return (self.workspace, self.endpoint_id, NAME)


@pytest.fixture(scope="module")
def server(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with instant_ray_server(tmp_path_factory.mktemp("metrics-tenancy")) as live:
        yield live


@pytest.fixture(scope="module")
def tenants(server: LiveServer) -> Iterator[tuple[Tenant, Tenant]]:
    """Workspace A (the admin's) and workspace B, each with a READY endpoint `chat`."""
    workspace_a = default_workspace(server)  # (the first listed, until B exists)
    workspace_b = new_workspace(server, "b")
    token_b = new_user(server, workspace_b, "bob", admin=True)
    with server.client() as admin, server.client(token_b) as bob:
        a = Tenant(workspace_a, ADMIN_TOKEN, create_endpoint(admin, NAME)["id"])
        try:
            b = Tenant(workspace_b, token_b, create_endpoint(bob, NAME)["id"])
            assert a.endpoint_id != b.endpoint_id and a.workspace != b.workspace
            yield a, b
        finally:  # the server's teardown deletes only the admin's workspace's endpoints
            bob.delete(f"/api/2.0/serving-endpoints/{NAME}")


def _ask(server: LiveServer, tenant: Tenant, times: int) -> None:
    client = openai_client(server, tenant.token)
    for _ in range(times):
        client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=2)


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def _requests(text: str) -> dict[Series, float]:
    """`moeserve_requests_total`, summed over served entity and status, per series."""
    counts: dict[Series, float] = {}
    for name, labels, value in _samples(text):
        if name == "moeserve_requests_total":
            key = (labels.get("workspace", ""), labels.get("endpoint_id", ""), labels["endpoint"])
            counts[key] = counts.get(key, 0) + value
    return counts


def _endpoint_view(server: LiveServer, tenant: Tenant) -> str:
    with server.client(tenant.token) as http:
        response = http.get(f"/api/2.0/serving-endpoints/{NAME}/metrics")
    assert response.status_code == 200, response.text
    return response.text


def _operator_view(server: LiveServer) -> str:
    with server.client() as http:
        response = http.get("/metrics")
    assert response.status_code == 200, response.text
    return response.text


def _only_own_series(text: str, tenant: Tenant) -> None:
    """Every sample of an endpoint view is the tenant's endpoint's, and there are some."""
    samples = _samples(text)
    assert samples
    for name, labels, _ in samples:
        own = (labels.get("workspace"), labels.get("endpoint_id"), labels.get("endpoint"))
        assert own == tenant.series, (name, labels)


def test_a_workspace_never_sees_another_workspaces_traffic_on_an_endpoint_of_the_same_name(
    server: LiveServer, tenants: tuple[Tenant, Tenant]
) -> None:
    a, b = tenants
    _ask(server, a, 3)

    untouched = _endpoint_view(server, b)
    assert _requests(untouched) == {}  # B's `chat` was never queried
    _only_own_series(untouched, b)
    assert _requests(_endpoint_view(server, a)) == {a.series: 3}

    _ask(server, b, 1)
    b_view = _endpoint_view(server, b)
    _only_own_series(b_view, b)
    assert _requests(b_view) == {b.series: 1}
    a_view = _endpoint_view(server, a)
    _only_own_series(a_view, a)
    assert _requests(a_view) == {a.series: 3}


def test_the_operator_view_shows_each_workspaces_endpoint_as_its_own_series(
    server: LiveServer, tenants: tuple[Tenant, Tenant]
) -> None:
    a, b = tenants
    before = _requests(_operator_view(server))
    _ask(server, a, 2)
    _ask(server, b, 1)
    after = _requests(_operator_view(server))
    assert set(after) == {a.series, b.series}
    assert after[a.series] - before.get(a.series, 0) == 2
    assert after[b.series] - before.get(b.series, 0) == 1

    def replica_gauges() -> set[Series]:
        return {
            (labels["workspace"], labels["endpoint_id"], labels["endpoint"])
            for name, labels, _ in _samples(_operator_view(server))
            if name == "moeserve_served_entity_replicas"
        }

    wanted = {a.series, b.series}
    wait_for(lambda: replica_gauges() == wanted, what=lambda: f"{wanted} in {replica_gauges()}")


def test_a_shared_endpoints_traffic_is_split_by_the_querying_workspace() -> None:
    """A platform endpoint (no workspace) serves every workspace: each sees its own traffic
    on it and the endpoint's own gauges (workspace label ""), never another's traffic."""
    shared = dataclasses.replace(query_target(None), workspace_id=None)
    of_a = dataclasses.replace(shared, caller=dataclasses.replace(shared.caller, workspace_id="a"))
    of_b = dataclasses.replace(shared, caller=dataclasses.replace(shared.caller, workspace_id="b"))
    assert (of_a.labels, of_b.labels) == (("a", "ep", "e"), ("b", "ep", "e"))
    metrics = GatewayMetrics()
    metrics.series(of_a.labels, "entity").output_tokens.inc(5)
    metrics.series(of_b.labels, "entity").output_tokens.inc(1)
    metrics.replicas.labels("", "ep", "e", "entity").set(1)  # sampled: the endpoint's own

    view = _samples(metrics.endpoint_text("ep", "b"))
    assert {labels["workspace"] for _, labels, _ in view} == {"b", ""}
    assert [v for name, _, v in view if name == "moeserve_output_tokens_total"] == [1]
    everything = {labels["workspace"] for _, labels, _ in _samples(metrics.text().decode())}
    assert everything == {"a", "b", ""}  # the operator sees each tenant's series


def test_a_deleted_endpoints_replica_gauges_go_with_it(
    server: LiveServer, tenants: tuple[Tenant, Tenant]
) -> None:
    _, b = tenants

    def gauged() -> set[str]:
        return {
            labels["endpoint_id"]
            for name, labels, _ in _samples(_operator_view(server))
            if name == "moeserve_served_entity_replicas"
        }

    with server.client(b.token) as bob:
        gone = create_endpoint(bob, "gone")["id"]
        try:
            wait_for(lambda: gone in gauged(), what=lambda: f"{gone} in {gauged()}")
        finally:
            assert bob.delete("/api/2.0/serving-endpoints/gone").status_code == 200
    wait_for(lambda: gone not in gauged(), what=lambda: f"{gone} gone from {gauged()}")
    assert b.endpoint_id in gauged()  # the other endpoints' gauges stay
