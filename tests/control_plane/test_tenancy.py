"""Tenancy and auth over HTTP, on SQLite and PostgreSQL: workspaces never see each other's
endpoints, permission levels hold, bad tokens get 401, and token plaintext is never stored
or logged."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from sqlalchemy import text

from tests.control_plane.conftest import ADMIN_TOKEN, SHARED, LiveServer

BASE = "/api/2.0/serving-endpoints"
CONFIG = {
    "served_entities": [
        {"entity_name": "dbrx-tiny", "entity_version": "1", "workload_size": "Small"}
    ]
}


def new_workspace(server: LiveServer, name: str) -> str:
    response = server.client().post("/api/2.0/workspaces", json={"name": name})
    assert response.status_code == 200, response.text
    assert response.json()["name"] == name
    assert (response.json()["cloud"], response.json()["region"]) == ("local", "local")
    return str(response.json()["workspace_id"])


def new_user(server: LiveServer, workspace_id: str, name: str, *, admin: bool = False) -> str:
    response = server.client().post(
        f"/api/2.0/workspaces/{workspace_id}/users", json={"user_name": name, "admin": admin}
    )
    assert response.status_code == 200, response.text
    assert response.json()["user_name"] == name
    return str(response.json()["token_value"])


def default_workspace(server: LiveServer) -> str:
    workspaces = server.client().get("/api/2.0/workspaces").json()["workspaces"]
    return str(workspaces[0]["workspace_id"])


def endpoint_routes(name: str, endpoint_id: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    return [
        ("GET", f"{BASE}/{name}", None),
        ("PUT", f"{BASE}/{name}/config", CONFIG),
        ("PATCH", f"{BASE}/{name}/tags", {"add_tags": [{"key": "k", "value": "v"}]}),
        ("PUT", f"{BASE}/{name}/ai-gateway", {"rate_limits": []}),
        ("PUT", f"{BASE}/{name}/rate-limits", {"rate_limits": []}),
        ("GET", f"{BASE}/{name}/metrics", None),
        ("GET", f"{BASE}/{name}/openapi", None),
        ("GET", f"{BASE}/{name}/served-models/dbrx-tiny-1/logs", None),
        ("GET", f"{BASE}/{name}/served-models/dbrx-tiny-1/build-logs", None),
        ("GET", f"/api/2.0/permissions/serving-endpoints/{endpoint_id}", None),
        ("PATCH", f"/api/2.0/permissions/serving-endpoints/{endpoint_id}", {}),
        ("POST", f"/serving-endpoints/{name}/invocations", {"prompt": "hi"}),
        (
            "POST",
            "/serving-endpoints/chat/completions",
            {"model": name, "messages": [{"role": "user", "content": "hi"}]},
        ),
        ("DELETE", f"{BASE}/{name}", None),
    ]


def test_another_workspace_gets_404_on_every_route_of_an_endpoint(
    instant_server: LiveServer,
) -> None:
    endpoint = instant_server.client().post(BASE, json={"name": "secret", "config": CONFIG}).json()
    other = new_user(instant_server, new_workspace(instant_server, "b"), "bob", admin=True)
    with instant_server.client(other) as client:
        for method, path, body in endpoint_routes("secret", endpoint["id"]):
            response = client.request(method, path, json=body)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
        names = [e["name"] for e in client.get(BASE).json()["endpoints"]]
        assert names == SHARED  # shared endpoints are visible to all
        # the same name is free in the other workspace
        assert client.post(BASE, json={"name": "secret", "config": CONFIG}).status_code == 200
    assert instant_server.client().get(f"{BASE}/secret").json()["id"] == endpoint["id"]


def test_permission_levels_limit_what_principals_may_do(instant_server: LiveServer) -> None:
    workspace = default_workspace(instant_server)
    endpoint = instant_server.client().post(BASE, json={"name": "ep", "config": CONFIG}).json()
    querier = new_user(instant_server, workspace, "quinn")
    viewer = new_user(instant_server, workspace, "vera")
    stranger = new_user(instant_server, workspace, "sam")
    grants = {
        "access_control_list": [
            {"user_name": "quinn", "permission_level": "CAN_QUERY"},
            {"user_name": "vera", "permission_level": "CAN_VIEW"},
        ]
    }
    acl_path = f"/api/2.0/permissions/serving-endpoints/{endpoint['id']}"
    acl = instant_server.client().patch(acl_path, json=grants).json()
    levels = {
        next(v for k, v in e.items() if k.endswith("_name")): e["all_permissions"][0][
            "permission_level"
        ]
        for e in acl["access_control_list"]
    }
    assert levels == {"admin": "CAN_MANAGE", "quinn": "CAN_QUERY", "vera": "CAN_VIEW"}

    with instant_server.client(querier) as client:
        assert client.get(f"{BASE}/ep").json()["permission_level"] == "CAN_QUERY"
        for method, path, body in (
            ("PUT", f"{BASE}/ep/config", CONFIG),
            ("DELETE", f"{BASE}/ep", None),
            ("PATCH", f"{BASE}/ep/tags", {"add_tags": []}),
            ("PUT", acl_path, grants),
        ):
            response = client.request(method, path, json=body)
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["error_code"] == "PERMISSION_DENIED"
    with instant_server.client(viewer) as client:
        assert client.get(f"{BASE}/ep").status_code == 200
        assert client.get(f"{BASE}/ep/openapi").status_code == 403  # querying needs CAN_QUERY
    with instant_server.client(stranger) as client:
        assert client.get(f"{BASE}/ep").status_code == 403
        assert [e["name"] for e in client.get(BASE).json()["endpoints"]] == SHARED
        # only account admins manage shared endpoints
        assert client.delete(f"{BASE}/databricks-dbrx-tiny").status_code == 403
        assert client.post("/api/2.0/workspaces", json={"name": "x"}).status_code == 403


def test_groups_carry_their_permissions_to_members(instant_server: LiveServer) -> None:
    workspace = default_workspace(instant_server)
    endpoint = instant_server.client().post(BASE, json={"name": "g", "config": CONFIG}).json()
    member = new_user(instant_server, workspace, "mia")
    group = instant_server.client().post(
        f"/api/2.0/workspaces/{workspace}/groups",
        json={"group_name": "ops", "members": ["mia"]},
    )
    assert group.json() == {"group_name": "ops", "members": ["mia"]}
    with instant_server.client(member) as client:
        assert client.get(f"{BASE}/g").status_code == 403
    instant_server.client().patch(
        f"/api/2.0/permissions/serving-endpoints/{endpoint['id']}",
        json={"access_control_list": [{"group_name": "ops", "permission_level": "CAN_MANAGE"}]},
    )
    with instant_server.client(member) as client:
        assert client.patch(f"{BASE}/g/tags", json={"add_tags": []}).status_code == 200


def test_missing_unknown_revoked_and_expired_tokens_get_401(instant_server: LiveServer) -> None:
    client = instant_server.client()
    created = client.post("/api/2.0/token/create", json={"comment": "ci"}).json()
    assert set(created["token_info"]) >= {"token_id", "comment", "creation_time", "expiry_time"}
    token = created["token_value"]
    short = client.post("/api/2.0/token/create", json={"lifetime_seconds": 1}).json()
    with instant_server.client(token) as mine:
        assert mine.get(BASE).status_code == 200
        listed = [t["token_id"] for t in client.get("/api/2.0/token/list").json()["token_infos"]]
        assert created["token_info"]["token_id"] in listed
        deleted = client.post(
            "/api/2.0/token/delete", json={"token_id": created["token_info"]["token_id"]}
        )
        assert deleted.status_code == 200
        response = mine.get(BASE)
        assert response.status_code == 401 and response.json()["error_code"] == "UNAUTHENTICATED"
    time.sleep(1.1)
    assert instant_server.client(short["token_value"]).get(BASE).status_code == 401
    assert instant_server.client("dapi-unknown").get(BASE).status_code == 401
    import httpx

    anonymous = httpx.get(instant_server.url + BASE)
    assert anonymous.status_code == 401 and "Bearer" in anonymous.json()["message"]


def test_tokens_are_stored_only_as_digests_and_never_logged(
    instant_server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = instant_server.client()
    issued = [client.post("/api/2.0/token/create", json={}).json()["token_value"]]
    issued.append(new_user(instant_server, default_workspace(instant_server), "lee"))
    issued.append(ADMIN_TOKEN)
    for token in issued:
        assert instant_server.client(token).get(BASE).status_code == 200
    dump = []
    with instant_server.plane.engine.connect() as connection:
        for table in ("tokens", "principals", "endpoints", "workspaces", "accounts"):
            dump += [repr(tuple(row)) for row in connection.execute(text(f"SELECT * FROM {table}"))]
    stored = "\n".join(dump)
    logged = caplog.text
    for token in issued:
        assert token not in stored and token not in logged


def test_workspace_admins_add_users_only_to_their_own_workspace(
    instant_server: LiveServer,
) -> None:
    first = default_workspace(instant_server)
    second = new_workspace(instant_server, "second")
    local_admin = new_user(instant_server, second, "ada", admin=True)
    with instant_server.client(local_admin) as client:
        added = client.post(f"/api/2.0/workspaces/{second}/users", json={"user_name": "u"})
        assert added.status_code == 200
        elsewhere = client.post(f"/api/2.0/workspaces/{first}/users", json={"user_name": "u"})
        assert elsewhere.status_code == 404
    duplicate = instant_server.client().post(
        f"/api/2.0/workspaces/{second}/users", json={"user_name": "u"}
    )
    assert duplicate.status_code == 409
