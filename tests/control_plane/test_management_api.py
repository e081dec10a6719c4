"""The management API over HTTP, on SQLite and on PostgreSQL, with the instant provider
(the reconciler runs for real; only replicas are simulated)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from billing.capacity import CapacityInterval
from tests.control_plane.conftest import SHARED, LiveServer, wait_for

BASE = "/api/2.0/serving-endpoints"


def served(entity: str = "dbrx-tiny", **fields: Any) -> dict[str, Any]:
    return {"entity_name": entity, "entity_version": "1", "workload_size": "Small", **fields}


def create(server: LiveServer, name: str, *entities: dict[str, Any], **body: Any) -> Any:
    config: dict[str, Any] = {"served_entities": list(entities or [served()])}
    if "traffic_config" in body:
        config["traffic_config"] = body.pop("traffic_config")
    return server.client().post(BASE, json={"name": name, "config": config, **body})


def wait_ready(server: LiveServer, name: str) -> dict[str, Any]:
    client = server.client()

    def settled() -> Any:
        view = client.get(f"{BASE}/{name}").json()
        return view if view["state"]["config_update"] != "IN_PROGRESS" else None

    view = wait_for(settled, what=f"{name} to settle")
    assert view["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}, view
    return view


def error(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error_code", "message"}
    return str(body["error_code"]) + ": " + str(body["message"])


def test_create_reports_pending_config_then_becomes_ready(instant_server: LiveServer) -> None:
    response = create(instant_server, "chat")
    assert response.status_code == 200, response.text
    created = response.json()
    assert created["state"] == {"ready": "NOT_READY", "config_update": "IN_PROGRESS"}
    assert created["pending_config"]["config_version"] == 1
    assert created["permission_level"] == "CAN_MANAGE" and created["creator"] == "admin"
    assert created["creation_timestamp"] > 1_600_000_000_000  # milliseconds
    view = wait_ready(instant_server, "chat")
    entity = view["config"]["served_entities"][0]
    assert entity["name"] == "dbrx-tiny-1" and entity["state"]["deployment"] == "DEPLOYMENT_READY"
    assert "pending_config" not in view and "app_name" not in entity
    assert view["config"]["traffic_config"]["routes"] == [
        {"served_entity_name": "dbrx-tiny-1", "traffic_percentage": 100}
    ]
    names = [e["name"] for e in instant_server.client().get(BASE).json()["endpoints"]]
    assert names == ["chat", *SHARED]


INVALID: list[tuple[dict[str, Any], str]] = [
    ({"name": "has space"}, "is invalid"),
    ({"name": "databricks-mine"}, "reserved"),
    ({"name": "x", "entities": [served("no-such-model")]}, "not registered"),
    ({"name": "x", "entities": [served(entity_version="7")]}, "only version '1'"),
    ({"name": "x", "entities": [served(workload_type="TPU")]}, "unknown workload_type"),
    ({"name": "x", "entities": [served(workload_type="GPU_MEDIUM")]}, "GPU"),
    ({"name": "x", "entities": [served(workload_size="Huge")]}, "workload_size"),
    ({"name": "x", "entities": [served(name=f"e{i}") for i in range(11)]}, "at most 10"),
    ({"name": "x", "entities": [served(), served()]}, "unique"),
    (
        {
            "name": "x",
            "entities": [served(name="a"), served(name="b")],
            "traffic_config": {
                "routes": [
                    {"served_entity_name": "a", "traffic_percentage": 60},
                    {"served_entity_name": "b", "traffic_percentage": 30},
                ]
            },
        },
        "sum to 100",
    ),
    (
        {
            "name": "x",
            "entities": [served()],
            "traffic_config": {
                "routes": [{"served_entity_name": "ghost", "traffic_percentage": 100}]
            },
        },
        "ghost",
    ),
    (
        {
            "name": "x",
            "entities": [
                {
                    "entity_name": "dbrx-tiny",
                    "entity_version": "1",
                    "max_provisioned_throughput": 3000,
                }
            ],
        },
        "multiple of the model's throughput chunk size 2900",  # the rate card's dbrx-tiny
    ),
    (
        {
            "name": "x",
            "entities": [served(max_provisioned_throughput=2900)],
        },
        "not both",
    ),
]


def test_invalid_endpoints_are_rejected_with_a_clear_400(instant_server: LiveServer) -> None:
    for case, needle in INVALID:
        body = dict(case)
        entities = body.pop("entities", [served()])
        message = error(create(instant_server, body.pop("name"), *entities, **body), 400)
        assert message.startswith("INVALID_PARAMETER_VALUE") and needle in message, message
    names = [e["name"] for e in instant_server.client().get(BASE).json()["endpoints"]]
    assert names == SHARED  # nothing half-created


def test_duplicate_name_is_409_and_update_during_rollout_is_409(
    instant_server: LiveServer,
) -> None:
    provider = instant_server.plane.provider
    provider.ready_after = 10**9  # replicas never come up while this test looks
    assert create(instant_server, "dup").status_code == 200
    assert error(create(instant_server, "dup"), 409).startswith("RESOURCE_ALREADY_EXISTS")
    update = {"served_entities": [served("mixtral-tiny")]}
    conflict = instant_server.client().put(f"{BASE}/dup/config", json=update)
    assert error(conflict, 409).startswith("RESOURCE_CONFLICT")
    provider.ready_after = 0
    assert wait_ready(instant_server, "dup")["config"]["config_version"] == 1


def test_config_update_rolls_to_a_new_app_and_retires_the_old_one(
    instant_server: LiveServer,
) -> None:
    provider = instant_server.plane.provider
    create(instant_server, "roll")
    first = wait_ready(instant_server, "roll")
    old_apps = set(provider.apps)
    update = {"served_entities": [served("mixtral-tiny", workload_size="Medium")]}
    response = instant_server.client().put(f"{BASE}/roll/config", json=update)
    assert response.status_code == 200, response.text
    assert response.json()["pending_config"]["config_version"] == 2
    view = wait_ready(instant_server, "roll")
    assert view["config"]["config_version"] == 2
    assert view["config"]["served_entities"][0]["entity_name"] == "mixtral-tiny"
    assert first["id"] == view["id"]
    # the old entity's app is deleted once the retire grace has passed
    old_app = next(a for a in old_apps if a.startswith(f"ms-{view['id']}-"))
    wait_for(lambda: old_app not in provider.apps, what="old app retired")


def test_capacity_timeline_records_each_change_and_the_end(instant_server: LiveServer) -> None:
    create(instant_server, "cap")
    endpoint_id = wait_ready(instant_server, "cap")["id"]
    update = {"served_entities": [served(workload_size="Large")]}
    instant_server.client().put(f"{BASE}/cap/config", json=update)
    wait_ready(instant_server, "cap")
    assert instant_server.client().delete(f"{BASE}/cap").status_code == 200
    with instant_server.plane.sessions() as session:
        rows = session.scalars(
            select(CapacityInterval)
            .where(CapacityInterval.endpoint_id == endpoint_id)
            .order_by(CapacityInterval.id)
        ).all()
    assert [(r.workload_size, r.max_replicas) for r in rows] == [("Small", 1), ("Large", 4)]
    assert rows[0].ended_at == rows[1].started_at
    assert all(r.ended_at is not None for r in rows)  # closed on delete


def test_tags_ai_gateway_and_rate_limits_round_trip(instant_server: LiveServer) -> None:
    create(instant_server, "t", tags=[{"key": "team", "value": "ml"}])
    client = instant_server.client()
    tags = client.patch(
        f"{BASE}/t/tags",
        json={"add_tags": [{"key": "env", "value": "prod"}], "delete_tags": ["team"]},
    ).json()
    assert tags == {"tags": [{"key": "env", "value": "prod"}]}
    gateway = {
        "rate_limits": [{"calls": 60, "key": "user", "renewal_period": "minute"}],
        "usage_tracking_config": {"enabled": True},
    }
    assert client.put(f"{BASE}/t/ai-gateway", json=gateway).json() == gateway
    limits = {"rate_limits": [{"calls": 10, "key": "endpoint", "renewal_period": "minute"}]}
    assert client.put(f"{BASE}/t/rate-limits", json=limits).json() == limits
    view = client.get(f"{BASE}/t").json()
    assert view["tags"] == tags["tags"] and view["ai_gateway"] == gateway


def test_read_only_extras_describe_the_endpoint(instant_server: LiveServer) -> None:
    endpoint_id = create(instant_server, "x").json()["id"]
    wait_ready(instant_server, "x")
    client = instant_server.client()
    workspace = client.get("/api/2.0/workspaces").json()["workspaces"][0]["workspace_id"]
    endpoint, tenant = f'endpoint="x",endpoint_id="{endpoint_id}"', f'workspace="{workspace}"'
    metrics = client.get(f"{BASE}/x/metrics")  # labels in the exposition's (sorted) order
    assert f"moeserve_endpoint_ready{{{endpoint},{tenant}}} 1.0" in metrics.text
    assert (
        "moeserve_served_entity_running_replicas"
        f'{{{endpoint},served_entity="dbrx-tiny-1",{tenant}}} 1.0' in metrics.text
    )
    spec = client.get(f"{BASE}/x/openapi").json()
    assert spec["openapi"].startswith("3.") and "/invocations" in spec["paths"]
    assert "logs of ms-" in client.get(f"{BASE}/x/served-models/dbrx-tiny-1/logs").json()["logs"]
    build = client.get(f"{BASE}/x/served-models/dbrx-tiny-1/build-logs").json()["logs"]
    assert "DEPLOYMENT_READY" in build and "preset dbrx-tiny" in build
    assert error(client.get(f"{BASE}/x/served-models/nope/logs"), 404)
    info = client.get(f"{BASE}/get-model-optimization-info/dbrx-tiny/1").json()
    # From the rate card (billing/ratecards/): dbrx-tiny's measured replica throughput.
    assert info == {"optimizable": True, "throughput_chunk_size": 2900, "model_type": "dbrx"}


def test_failed_deployment_marks_update_failed_with_the_cause(
    instant_server: LiveServer,
) -> None:
    instant_server.plane.provider.failing_models = frozenset({"mixtral-tiny"})
    create(instant_server, "f", served("mixtral-tiny"))
    client = instant_server.client()
    view = wait_for(
        lambda: (
            (v := client.get(f"{BASE}/f").json())["state"]["config_update"] == "UPDATE_FAILED" and v
        ),
        what="update to fail",
    )
    assert view["state"]["ready"] == "NOT_READY"
    state = view["pending_config"]["served_entities"][0]["state"]
    assert state["deployment"] == "DEPLOYMENT_FAILED"
    assert "mixtral-tiny" in state["deployment_state_message"]
    # a failed update can be replaced by a good one
    update = {"served_entities": [served()]}
    assert client.put(f"{BASE}/f/config", json=update).status_code == 200
    assert wait_ready(instant_server, "f")["config"]["config_version"] == 2
