"""The audit log (issue 14, finding 13), over HTTP with the real `databricks-sdk` client,
on SQLite and PostgreSQL: management, permission, token, SCIM and billing actions each
leave one event naming who acted, what it did, its target, when, from where and how it
ended; refusals are recorded as DENIED and failed authentications without a workspace;
no token or environment variable value is ever stored; `GET /api/2.0/audit-log` is for
admins, shows one workspace, and pages through every event exactly once, newest first."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.config import Config
from databricks.sdk.service.iam import Patch, PatchOp, PatchSchema
from databricks.sdk.service.serving import (
    EndpointCoreConfigInput,
    ServedEntityInput,
    ServingEndpointAccessControlRequest,
    ServingEndpointPermissionLevel,
)
from fastapi.routing import APIRoute
from sqlalchemy import select, text

from control_plane.app import routers
from control_plane.audit.actions import (
    ACCOUNT_API_PREFIX,
    API_PREFIX,
    CATALOGUE,
    AuditAction,
    catalogued,
)
from control_plane.db.models import AuditRecord
from tests.control_plane.conftest import ADMIN_TOKEN, LiveServer, live_server, make_settings
from tests.control_plane.fake_provider import InstantProvider
from tests.control_plane.test_tenancy import default_workspace, new_workspace

LOG = "/api/2.0/audit-log"
ENV_SECRET = "env-value-that-must-never-be-logged-7f3a"
WRONG_TOKEN = "dapi0123456789abcdef0123456789abcdef01234567"
DEACTIVATE = [Patch(op=PatchOp.REPLACE, path="active", value=[{"value": "false"}])]
PATCH_OP = [PatchSchema.URN_IETF_PARAMS_SCIM_API_MESSAGES_2_0_PATCH_OP]


@pytest.fixture
def server(database_url: str, tmp_path: Any) -> Iterator[LiveServer]:
    settings = make_settings(database_url, tmp_path, shared_endpoints=[])
    with live_server(settings, InstantProvider()) as live:
        yield live


@dataclass
class Principal:
    id: str
    name: str
    token: str


@dataclass
class Tenants:
    """Workspace A (the bootstrap admin's, an account admin) with a non-admin user, and
    workspace B with an admin of its own."""

    a: str
    b: str
    bob: Principal  # a user of A, not an admin
    mallory: Principal  # B's workspace admin


def add_user(server: LiveServer, workspace: str, name: str, *, admin: bool = False) -> Principal:
    with server.client() as http:
        response = http.post(
            f"/api/2.0/workspaces/{workspace}/users", json={"user_name": name, "admin": admin}
        )
    assert response.status_code == 200, response.text
    created = response.json()
    return Principal(str(created["id"]), name, created["token_value"])


@pytest.fixture
def tenants(server: LiveServer) -> Tenants:
    a, b = default_workspace(server), new_workspace(server, "audit-b")
    return Tenants(
        a=a,
        b=b,
        bob=add_user(server, a, "bob"),
        mallory=add_user(server, b, "mallory", admin=True),
    )


def sdk(server: LiveServer, token: str = ADMIN_TOKEN) -> WorkspaceClient:
    return WorkspaceClient(config=Config(host=server.url, token=token, retry_timeout_seconds=5))


def all_events(server: LiveServer, token: str = ADMIN_TOKEN, **params: Any) -> list[Any]:
    """Every event the listing shows `token`'s caller, page after page."""
    events, page_token = [], None
    with server.client(token) as http:
        while True:
            query = {**params, **({"page_token": page_token} if page_token else {})}
            response = http.get(LOG, params=query)
            assert response.status_code == 200, response.text
            page = response.json()
            events += page["events"]
            page_token = page.get("next_page_token")
            if page_token is None:
                return events


def only(server: LiveServer, action: AuditAction, token: str = ADMIN_TOKEN) -> dict[str, Any]:
    found = all_events(server, token, action=action.value)
    assert len(found) == 1, found
    event: dict[str, Any] = found[0]
    return event


def stored(server: LiveServer) -> list[dict[str, Any]]:
    """Every stored event, of every workspace and of none, as the database holds them."""
    with server.plane.sessions() as session:
        rows = session.scalars(select(AuditRecord)).all()
        return [
            {c.name: getattr(row, c.name) for c in AuditRecord.__table__.columns} for row in rows
        ]


def mint(client: WorkspaceClient, comment: str) -> tuple[str, str]:
    """(id, value) of a new token of the client's principal, through `tokens.create`."""
    created = client.tokens.create(comment=comment)
    assert created.token_info is not None and created.token_info.token_id is not None
    assert created.token_value is not None
    return created.token_info.token_id, created.token_value


def cursor_token(document: str) -> str:
    """A page token as the listing encodes its cursor, holding `document`."""
    return base64.urlsafe_b64encode(document.encode()).decode().rstrip("=")


def create_endpoint(client: WorkspaceClient, name: str) -> Any:
    entity = ServedEntityInput(
        entity_name="dbrx-tiny",
        entity_version="1",
        workload_size="Small",
        scale_to_zero_enabled=True,
        environment_vars={"APP_SECRET": ENV_SECRET},
    )
    return client.serving_endpoints.create(
        name=name, config=EndpointCoreConfigInput(name=name, served_entities=[entity])
    ).response


def test_each_action_leaves_one_event_naming_who_what_and_target(
    server: LiveServer, tenants: Tenants
) -> None:
    admin = sdk(server)
    before = datetime.now(UTC)
    endpoint = create_endpoint(admin, "audited")
    admin.serving_endpoints.set_permissions(
        endpoint.id,
        access_control_list=[
            ServingEndpointAccessControlRequest(
                user_name="bob", permission_level=ServingEndpointPermissionLevel.CAN_QUERY
            )
        ],
    )
    token_id, _ = mint(admin, "for the audit")
    admin.token_management.delete(token_id)
    carol = add_user(server, tenants.a, "carol")
    admin.users.patch(carol.id, operations=DEACTIVATE, schemas=PATCH_OP)
    admin.serving_endpoints.get("audited")  # reads are not recorded
    admin.serving_endpoints.list()
    with server.client() as http:
        query = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        http.post("/serving-endpoints/audited/invocations", json=query)  # nor are queries
        assert http.get("/api/2.0/billing/usage").status_code == 200  # billing reads are

    created = only(server, AuditAction.CREATE_ENDPOINT)
    assert created["target"] == {"name": "audited"}
    assert created["user_name"] == "admin"
    assert created["actor"] == "user"
    assert created["workspace_id"] == tenants.a
    assert created["source_ip_address"] == "127.0.0.1"
    assert (created["status_code"], created["result"]) == (200, "SUCCEEDED")
    assert "error_code" not in created
    assert before <= datetime.fromisoformat(created["event_time"]) <= datetime.now(UTC)
    granted = only(server, AuditAction.SET_PERMISSIONS)
    assert granted["target"] == {"endpoint_id": endpoint.id}
    assert only(server, AuditAction.CREATE_TOKEN)["target"] == {"token_id": token_id}
    revoked = only(server, AuditAction.DELETE_MANAGED_TOKEN)
    assert revoked["target"] == {"token_id": token_id}
    assert revoked["result"] == "SUCCEEDED"
    deactivated = only(server, AuditAction.PATCH_USER)
    assert deactivated["target"] == {"user_id": carol.id}
    assert deactivated["result"] == "SUCCEEDED"
    added = all_events(server, action=AuditAction.ADD_USER)  # bob, mallory, carol
    assert [e["target"].get("user_name") for e in added] == ["carol", "mallory", "bob"]
    assert added[0]["target"] == {
        "workspace_id": tenants.a,
        "user_name": "carol",
        "user_id": carol.id,
    }
    assert only(server, AuditAction.READ_USAGE)["target"] == {}
    # The fixture's calls and these, and nothing else: no other read, no query.
    assert sorted(e["action"] for e in all_events(server)) == sorted(
        [
            AuditAction.CREATE_WORKSPACE,
            AuditAction.ADD_USER,  # bob
            AuditAction.ADD_USER,  # mallory (in B, by A's account admin)
            AuditAction.CREATE_ENDPOINT,
            AuditAction.SET_PERMISSIONS,
            AuditAction.CREATE_TOKEN,
            AuditAction.DELETE_MANAGED_TOKEN,
            AuditAction.ADD_USER,  # carol
            AuditAction.PATCH_USER,
            AuditAction.READ_USAGE,
        ]
    )


def test_refusals_are_recorded_as_denied(server: LiveServer, tenants: Tenants) -> None:
    token_id, _ = mint(sdk(server), "not bob's")
    with server.client(tenants.bob.token) as http:
        response = http.delete(f"/api/2.0/token-management/tokens/{token_id}")
        assert response.status_code == 403, response.text
    with server.client(tenants.mallory.token) as http:  # A's token does not exist for B
        response = http.delete(f"/api/2.0/token-management/tokens/{token_id}")
        assert response.status_code == 404, response.text
        assert http.post("/api/2.0/token/create", json={"lifetime_seconds": "x"}).is_client_error

    denied = only(server, AuditAction.DELETE_MANAGED_TOKEN)
    assert denied["user_name"] == "bob"
    assert denied["principal_id"] == int(tenants.bob.id)
    assert denied["target"] == {"token_id": token_id}
    assert (denied["status_code"], denied["result"]) == (403, "DENIED")
    assert denied["error_code"] == "PERMISSION_DENIED"
    in_b = all_events(server, tenants.mallory.token)
    assert [(e["user_name"], e["status_code"], e["result"]) for e in in_b] == [
        ("mallory", 400, "FAILED"),  # newest first
        ("mallory", 404, "DENIED"),
    ]


def test_failed_authentication_is_recorded_without_a_workspace(
    server: LiveServer, tenants: Tenants
) -> None:
    with server.client(WRONG_TOKEN) as http:
        assert http.delete("/api/2.0/serving-endpoints/anything").status_code == 401
        assert http.get("/api/2.0/serving-endpoints").status_code == 401  # reads too
    with httpx.Client(base_url=server.url) as anonymous:
        assert anonymous.post("/api/2.0/token/create", json={}).status_code == 401

    unknown = [e for e in stored(server) if e["actor"] == "unknown"]
    assert sorted((e["action"], e["status_code"], e["result"]) for e in unknown) == [
        (AuditAction.DELETE_ENDPOINT, 401, "DENIED"),
        (AuditAction.LIST_ENDPOINTS, 401, "DENIED"),
        (AuditAction.CREATE_TOKEN, 401, "DENIED"),
    ]
    assert all(e["workspace_id"] is None and e["user_name"] is None for e in unknown)
    assert all(e["error_code"] == "UNAUTHENTICATED" for e in unknown)
    shown = all_events(server) + all_events(server, tenants.mallory.token)
    assert all(e["actor"] != "unknown" for e in shown)


def test_no_secret_reaches_the_log(server: LiveServer, tenants: Tenants) -> None:
    admin = sdk(server)
    create_endpoint(admin, "with-a-secret")
    _, value = mint(admin, "secret")
    secrets = [value, ENV_SECRET, WRONG_TOKEN, tenants.bob.token, ADMIN_TOKEN]
    with server.client() as http:
        # A token pasted where its id belongs, in a path and in a body.
        assert http.delete(f"/api/2.0/token-management/tokens/{value}").status_code == 404
        assert http.post("/api/2.0/token/delete", json={"token_id": value}).status_code == 404
        response = http.post(
            "/api/2.0/token-management/on-behalf-of/tokens", json={"user_name": "bob"}
        )
        assert response.status_code == 200, response.text
        secrets.append(response.json()["token_value"])
    with server.client(WRONG_TOKEN) as http:
        assert http.post("/api/2.0/token/create", json={}).status_code == 401

    listed = json.dumps(all_events(server)) + json.dumps(all_events(server, tenants.mallory.token))
    everything = json.dumps(stored(server), default=str)
    assert "[REDACTED]" in everything  # the pasted tokens were seen, and left out
    for secret in secrets:
        assert secret not in listed
        assert secret not in everything


def test_pages_walk_every_event_exactly_once_newest_first(
    server: LiveServer, tenants: Tenants
) -> None:
    with server.client() as http:
        for n in range(13):
            assert http.post("/api/2.0/token/create", json={"comment": f"t{n}"}).is_success
    whole = all_events(server, page_size=1000)
    assert len(whole) == 16  # the fixture's three, and these
    paged = all_events(server, page_size=3)
    assert [e["event_id"] for e in paged] == [e["event_id"] for e in whole]
    times = [datetime.fromisoformat(e["event_time"]) for e in whole]
    assert times == sorted(times, reverse=True)

    # Time windows: [start_time, end_time), ISO 8601 or epoch milliseconds.
    middle = times[len(times) // 2]
    iso = all_events(server, start_time=middle.isoformat().replace("+00:00", "Z"))
    millis = int(middle.timestamp() * 1000)
    newer = all_events(server, start_time=str(millis))
    older = all_events(server, end_time=str(millis))
    assert {e["event_id"] for e in iso} == {
        e["event_id"] for e, t in zip(whole, times, strict=True) if t >= middle
    }
    assert len(newer) + len(older) == len(whole)
    after = (times[0] + timedelta(seconds=1)).isoformat()
    assert all_events(server, start_time=after) == []
    assert len(all_events(server, user_name="admin", action="tokens.create")) == 13
    with server.client() as http:
        for bad in (
            {"page_token": "not-a-token"},
            {"page_size": 1001},
            {"action": "nothing.at-all"},
            {"start_time": "2026-01-02", "end_time": "2026-01-01"},
            {"start_time": "99999999999999999999"},
            {
                "page_token": cursor_token(
                    json.dumps({"t": "0001-01-01T00:00:00+01:00", "id": "a" * 32})
                )
            },
        ):
            response = http.get(LOG, params=bad)
            assert response.status_code == 400, (bad, response.text)
            assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"


def test_a_workspace_admin_sees_its_own_workspace_only(
    server: LiveServer, tenants: Tenants
) -> None:
    with server.client(tenants.mallory.token) as http:
        assert http.post("/api/2.0/token/create", json={"comment": "b"}).is_success
    in_a, in_b = all_events(server), all_events(server, tenants.mallory.token)
    assert {e["workspace_id"] for e in in_a} == {tenants.a}
    assert [(e["workspace_id"], e["user_name"], e["action"]) for e in in_b] == [
        (tenants.b, "mallory", AuditAction.CREATE_TOKEN)
    ]
    assert not {e["event_id"] for e in in_a} & {e["event_id"] for e in in_b}
    with server.client(tenants.mallory.token) as http:  # A does not exist for B's admin
        response = http.get(LOG, params={"workspace_id": tenants.a})
        assert response.status_code == 404, response.text
    # A's account admin may look into any workspace of its account.
    assert all_events(server, workspace_id=tenants.b) == in_b


def test_only_admins_read_the_audit_log(server: LiveServer, tenants: Tenants) -> None:
    with server.client(tenants.bob.token) as http:
        response = http.get(LOG)
    assert response.status_code == 403, response.text
    assert response.json()["error_code"] == "PERMISSION_DENIED"
    with server.client(WRONG_TOKEN) as http:
        assert http.get(LOG).status_code == 401


def test_a_failed_audit_write_fails_no_request(
    server: LiveServer, tenants: Tenants, caplog: pytest.LogCaptureFixture
) -> None:
    with server.plane.sessions() as session:
        session.execute(text("DROP TABLE audit_log"))
        session.commit()
    with caplog.at_level(logging.ERROR, logger="control_plane.audit"):
        _, value = mint(sdk(server), "unrecorded")
    failures = [r.getMessage() for r in caplog.records if r.name.startswith("control_plane.audit")]
    assert failures and all("not recorded" in message for message in failures), failures
    assert all(value not in message for message in failures)


def test_every_management_route_has_a_named_action() -> None:
    """A route added under /api/2.0/ or /api/2.1/accounts/ without a catalogue entry would
    be recorded under a name derived from its function: name it in
    control_plane/audit/actions.py."""
    routes = {
        (method, route.path.rstrip("/"))
        for router in routers()
        for route in router.routes
        if isinstance(route, APIRoute) and route.path.startswith((API_PREFIX, ACCOUNT_API_PREFIX))
        for method in route.methods or ()
    }
    assert {r for r in routes if catalogued(*r) is None} == set()
    assert set(CATALOGUE) - routes == set()  # and no entry names a route that is gone
    assert {entry.action for entry in CATALOGUE.values()} == set(AuditAction)


@pytest.mark.parametrize("trusted", [False, True], ids=["no-proxy", "trusted-proxy"])
def test_the_source_address_is_the_peer_unless_a_trusted_proxy_names_another(
    tmp_path: Any, trusted: bool
) -> None:
    """The uvicorn configuration `moeserve run` uses (`cli.http_config`): by default a
    caller's X-Forwarded-For is ignored, so nobody writes another address into the log."""
    proxies = ["127.0.0.1"] if trusted else []
    settings = make_settings(
        f"sqlite:///{tmp_path / 'db'}", tmp_path, shared_endpoints=[], trusted_proxies=proxies
    )
    with live_server(settings, InstantProvider()) as live, live.client() as http:
        forged = {"X-Forwarded-For": "203.0.113.9"}
        assert http.post("/api/2.0/token/create", json={}, headers=forged).status_code == 200
        event = only(live, AuditAction.CREATE_TOKEN)
    assert event["source_ip_address"] == ("203.0.113.9" if trusted else "127.0.0.1")
