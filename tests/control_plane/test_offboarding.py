"""Offboarding (issue 14, finding 10), over HTTP with the real `databricks-sdk` client, on
SQLite and PostgreSQL: admins list, get and delete any token of their workspace
(`token_management`); deactivating or deleting a user or service principal (SCIM) revokes
its tokens at once, on the query path too while its resolution is cached; tokens minted
through the API live at most `max_token_lifetime_s` and never past the token that minted
them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.config import Config
from databricks.sdk.errors import BadRequest, NotFound, PermissionDenied
from databricks.sdk.service.iam import Patch, PatchOp, PatchSchema

from control_plane.auth.tokens import digest
from control_plane.settings import Settings
from tests.control_plane.conftest import ADMIN_TOKEN, LiveServer, live_server, make_settings
from tests.control_plane.fake_provider import InstantProvider

BASE = "/api/2.0/serving-endpoints"
SHARED_CHAT = "databricks-dbrx-tiny"
# Databricks' documented form (databricks-sdk drops a plain `value=False` from the body).
DEACTIVATE = [Patch(op=PatchOp.REPLACE, path="active", value=[{"value": "false"}])]
PATCH_OP = [PatchSchema.URN_IETF_PARAMS_SCIM_API_MESSAGES_2_0_PATCH_OP]
# Long enough that only an explicit forget() (not expiry) can explain a fresh 401.
CACHE_TTL_S = 60.0


@pytest.fixture
def server(database_url: str, tmp_path: Any) -> Iterator[LiveServer]:
    """Endpoints never become ready, so a query is resolved (token, endpoint, permission:
    cached for CACHE_TTL_S) and then answered 503 without any replica."""
    settings = make_settings(
        database_url,
        tmp_path,
        retire_grace_s=CACHE_TTL_S,
        gateway={"lookup_cache_ttl_s": CACHE_TTL_S},
    )
    with live_server(settings, InstantProvider(ready_after=10**9)) as live:
        yield live


@pytest.fixture
def short_lived_server(database_url: str, tmp_path: Any) -> Iterator[LiveServer]:
    settings = make_settings(database_url, tmp_path, max_token_lifetime_s=3600)
    with live_server(settings, InstantProvider()) as live:
        yield live


def sdk(server: LiveServer, token: str = ADMIN_TOKEN) -> WorkspaceClient:
    return WorkspaceClient(config=Config(host=server.url, token=token, retry_timeout_seconds=5))


def default_workspace(server: LiveServer) -> str:
    return str(server.client().get("/api/2.0/workspaces").json()["workspaces"][0]["workspace_id"])


def add(
    server: LiveServer,
    workspace: str,
    name: str,
    *,
    kind: str = "users",
    admin: bool = False,
    token: str = ADMIN_TOKEN,
) -> tuple[str, str]:
    """(SCIM id, first token) of a new user or service principal."""
    field = "user_name" if kind == "users" else "name"
    response = server.client(token).post(
        f"/api/2.0/workspaces/{workspace}/{kind}", json={field: name, "admin": admin}
    )
    assert response.status_code == 200, response.text
    return str(response.json().get("id")), str(response.json()["token_value"])


def mint(server: LiveServer, token: str, **body: Any) -> dict[str, Any]:
    response = server.client(token).post("/api/2.0/token/create", json=body)
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()
    return created


def query_statuses(server: LiveServer, token: str) -> dict[str, int]:
    """What `token` gets from the management API and from three query routes (the POSTs
    resolve through the query path's cache; /serving-endpoints/models reads the database)."""
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    with server.client(token) as http:
        return {
            "management": http.get(BASE).status_code,
            "models": http.get("/serving-endpoints/models").status_code,
            "invocations": http.post(
                f"/serving-endpoints/{SHARED_CHAT}/invocations", json=chat
            ).status_code,
            "chat": http.post(
                "/serving-endpoints/chat/completions", json={**chat, "model": SHARED_CHAT}
            ).status_code,
        }


def working(server: LiveServer, token: str) -> None:
    """`token` authenticates everywhere (the queries are resolved, and now cached: the
    endpoint is not ready, so they end in 503)."""
    assert query_statuses(server, token) == {
        "management": 200,
        "models": 200,
        "invocations": 503,
        "chat": 503,
    }


def refused(server: LiveServer, token: str) -> None:
    statuses = query_statuses(server, token)
    assert statuses == dict.fromkeys(statuses, 401), statuses


def test_admins_list_get_and_delete_another_users_token(server: LiveServer) -> None:
    workspace = default_workspace(server)
    user_id, first = add(server, workspace, "una")
    created = mint(server, first, comment="laptop")
    token_id, value = created["token_info"]["token_id"], created["token_value"]
    working(server, value)

    admin = sdk(server)
    listed = {t.token_id: t for t in admin.token_management.list()}
    mine = listed[token_id]
    assert (mine.comment, mine.owner_id, mine.created_by_username) == (
        "laptop",
        int(user_id),
        "una",
    )
    assert mine.created_by_id == int(user_id) and mine.workspace_id == int(workspace)
    # her first token was minted by the admin who added her
    initial = [t for t in listed.values() if t.owner_id == int(user_id) and t.token_id != token_id]
    assert [t.created_by_username for t in initial] == ["admin"]
    by_her = admin.token_management.list(created_by_username="una")
    assert [t.token_id for t in by_her] == [token_id]
    assert [t.token_id for t in admin.token_management.list(created_by_id=int(user_id))] == [
        token_id
    ]
    got = admin.token_management.get(token_id).token_info
    assert got is not None and got.token_id == token_id and got.expiry_time == mine.expiry_time
    # never the secret nor its digest
    with server.client() as http:
        raw = http.get("/api/2.0/token-management/tokens").text
        raw += http.get(f"/api/2.0/token-management/tokens/{token_id}").text
    assert value not in raw and digest(value) not in raw and "token_value" not in raw

    admin.token_management.delete(token_id)
    refused(server, value)  # at once, though the query path had cached its resolution
    with pytest.raises(NotFound):
        admin.token_management.get(token_id)
    with pytest.raises(NotFound):
        admin.token_management.delete(token_id)
    assert token_id not in {t.token_id for t in admin.token_management.list()}
    working(server, first)  # her other token is untouched


def test_token_management_is_for_admins_and_stays_in_the_workspace(server: LiveServer) -> None:
    workspace = default_workspace(server)
    _, plain = add(server, workspace, "pat")
    token_id = mint(server, plain)["token_info"]["token_id"]
    admin_token_id = mint(server, ADMIN_TOKEN)["token_info"]["token_id"]

    user = sdk(server, plain)
    for call in (
        lambda: list(user.token_management.list()),
        lambda: user.token_management.get(token_id),
        lambda: user.token_management.delete(token_id),
    ):
        with pytest.raises(PermissionDenied):
            call()

    other = server.client().post("/api/2.0/workspaces", json={"name": "other"}).json()
    _, foreign_admin = add(server, other["workspace_id"], "oz", admin=True)
    foreign = sdk(server, foreign_admin)
    for call in (
        lambda: foreign.token_management.get(token_id),
        lambda: foreign.token_management.delete(token_id),
    ):
        with pytest.raises(NotFound):
            call()
    assert token_id not in {t.token_id for t in foreign.token_management.list()}
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {foreign_admin}"}
    ) as h:
        scoped = h.get("/api/2.0/token-management/tokens", params={"workspace_id": workspace})
        assert scoped.status_code == 404
    working(server, plain)

    # a workspace admin sees, but cannot revoke, an account admin's token
    _, local_admin = add(server, workspace, "lou", admin=True)
    local = sdk(server, local_admin)
    assert local.token_management.get(admin_token_id).token_info is not None
    with pytest.raises(PermissionDenied):
        local.token_management.delete(admin_token_id)
    # account admins reach every workspace of the account with `workspace_id`
    with server.client() as http:
        theirs = http.get(
            "/api/2.0/token-management/tokens", params={"workspace_id": other["workspace_id"]}
        ).json()["token_infos"]
        assert [t["created_by_username"] for t in theirs] == ["admin"]


def test_deactivated_user_is_refused_at_once_even_with_a_warm_query_cache(
    server: LiveServer,
) -> None:
    workspace = default_workspace(server)
    user_id, first = add(server, workspace, "dee")
    second = mint(server, first)["token_value"]
    working(server, first)
    working(server, second)

    admin = sdk(server)
    assert admin.users.get(user_id).active is True
    admin.users.patch(user_id, operations=DEACTIVATE, schemas=PATCH_OP)
    refused(server, first)
    refused(server, second)
    seen = admin.users.get(user_id)
    assert (seen.user_name, seen.active) == ("dee", False)
    assert [u.id for u in admin.users.list(filter='userName eq "dee"')] == [user_id]
    assert all(t.owner_id != int(user_id) for t in admin.token_management.list())

    # reactivating does not bring the revoked tokens back; an admin mints a new one
    admin.users.patch(
        user_id, operations=[Patch(op=PatchOp.REPLACE, path="active", value=True)], schemas=PATCH_OP
    )
    assert admin.users.get(user_id).active is True
    refused(server, first)
    with server.client() as http:  # `user_name`: moeserve's extension of on-behalf-of tokens
        response = http.post(
            "/api/2.0/token-management/on-behalf-of/tokens",
            json={"user_name": "dee", "lifetime_seconds": 600},
        )
    assert response.status_code == 200, response.text
    working(server, response.json()["token_value"])


def test_deleted_user_and_service_principal_are_refused_at_once(server: LiveServer) -> None:
    workspace = default_workspace(server)
    user_id, user_token = add(server, workspace, "del")
    sp_id, sp_token = add(server, workspace, "etl-bot", kind="service-principals")
    working(server, user_token)
    working(server, sp_token)

    admin = sdk(server)
    assert admin.service_principals.get(sp_id).application_id == "etl-bot"
    admin.service_principals.delete(sp_id)
    refused(server, sp_token)
    with pytest.raises(NotFound):
        admin.service_principals.get(sp_id)
    working(server, user_token)

    admin.users.delete(user_id)
    refused(server, user_token)
    with pytest.raises(NotFound):
        admin.users.get(user_id)
    assert [u.user_name for u in admin.users.list(filter='userName eq "del"')] == []
    # the name is free again; the new user is someone else, the old tokens stay dead
    new_id, new_token = add(server, workspace, "del")
    assert new_id != user_id
    working(server, new_token)
    refused(server, user_token)


def test_scim_is_for_admins_of_the_principals_workspace(server: LiveServer) -> None:
    workspace = default_workspace(server)
    user_id, plain = add(server, workspace, "sue")
    me = sdk(server, plain)
    with pytest.raises(PermissionDenied):
        me.users.get(user_id)
    with pytest.raises(PermissionDenied):
        list(me.users.list())
    with pytest.raises(PermissionDenied):
        me.users.patch(user_id, operations=DEACTIVATE, schemas=PATCH_OP)

    other = server.client().post("/api/2.0/workspaces", json={"name": "elsewhere"}).json()
    _, foreign_admin = add(server, other["workspace_id"], "ola", admin=True)
    foreign = sdk(server, foreign_admin)
    for call in (
        lambda: foreign.users.get(user_id),
        lambda: foreign.users.patch(user_id, operations=DEACTIVATE, schemas=PATCH_OP),
        lambda: foreign.users.delete(user_id),
        lambda: foreign.service_principals.get(user_id),  # a user is no service principal
    ):
        with pytest.raises(NotFound):
            call()
    assert "sue" not in {u.user_name for u in foreign.users.list()}
    working(server, plain)

    admin = sdk(server)
    admin_id = next(u.id for u in admin.users.list(filter='userName eq "admin"'))
    assert admin_id is not None
    with pytest.raises(BadRequest):  # nobody locks themselves out
        admin.users.patch(admin_id, operations=DEACTIVATE, schemas=PATCH_OP)
    _, local_admin = add(server, workspace, "lea", admin=True)
    with pytest.raises(PermissionDenied):  # only account admins offboard an account admin
        sdk(server, local_admin).users.delete(admin_id)
    with pytest.raises(BadRequest):  # only `active` can change
        admin.users.patch(
            user_id,
            operations=[Patch(op=PatchOp.REPLACE, path="userName", value="x")],
            schemas=PATCH_OP,
        )
    with pytest.raises(BadRequest):
        list(admin.users.list(filter='userName co "s"'))
    # a workspace admin offboards the users of its own workspace
    sdk(server, local_admin).users.patch(user_id, operations=DEACTIVATE, schemas=PATCH_OP)
    refused(server, plain)
    working(server, ADMIN_TOKEN)


def test_scim_patch_accepts_the_forms_identity_providers_send(server: LiveServer) -> None:
    workspace = default_workspace(server)
    path = "/api/2.0/preview/scim/v2/ServicePrincipals"
    schemas = ["urn:ietf:params:scim:api:messages:2.0:PatchOp"]
    with server.client() as http:
        for number, operation in enumerate(
            (
                {"op": "replace", "path": "active", "value": False},
                {"op": "Replace", "value": {"active": False}},
                {"op": "replace", "path": "active", "value": "False"},
            )
        ):
            sp_id, token = add(server, workspace, f"sp-{number}", kind="service-principals")
            working(server, token)
            answer = http.patch(
                f"{path}/{sp_id}", json={"schemas": schemas, "Operations": [operation]}
            )
            assert answer.status_code == 200, answer.text
            assert (
                answer.json()["active"] is False
                and answer.json()["applicationId"] == f"sp-{number}"
            )
            refused(server, token)
        sp_id, token = add(server, workspace, "sp-kept", kind="service-principals")
        for body in (
            {"schemas": schemas, "Operations": [{"op": "replace", "path": "active"}]},
            {"schemas": schemas, "Operations": [{"op": "remove", "path": "active"}]},
            {
                "schemas": ["urn:x"],
                "Operations": [{"op": "replace", "path": "active", "value": False}],
            },
            {"schemas": schemas, "Operations": []},
        ):
            answer = http.patch(f"{path}/{sp_id}", json=body)
            assert answer.status_code == 400, (body, answer.text)
        assert http.patch(f"{path}/not-a-number", json={"Operations": []}).status_code in (400, 404)
        listed = http.get(path, params={"filter": 'applicationId eq "sp-kept"'}).json()
        assert [r["id"] for r in listed["Resources"]] == [sp_id]
        assert listed["totalResults"] == 1
    working(server, token)


def test_max_token_lifetime_is_enforced(short_lived_server: LiveServer) -> None:
    server = short_lived_server
    too_long = server.client().post("/api/2.0/token/create", json={"lifetime_seconds": 3601})
    assert too_long.status_code == 400
    assert too_long.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "3600" in too_long.json()["message"]

    now_ms = time.time() * 1000
    for body in ({}, {"lifetime_seconds": 0}, {"lifetime_seconds": 3600}):
        info = mint(server, ADMIN_TOKEN, **body)["token_info"]
        assert info["expiry_time"] != -1, body
        assert now_ms + 3590_000 <= info["expiry_time"] <= now_ms + 3610_000, body

    # a new principal's first token, and a token minted on its behalf, are bounded too
    sp_id, _ = add(server, default_workspace(server), "svc", kind="service-principals")
    admin = sdk(server)
    first = [t for t in admin.token_management.list() if t.owner_id == int(sp_id)]
    assert len(first) == 1 and first[0].expiry_time is not None
    assert 0 < first[0].expiry_time <= time.time() * 1000 + 3_600_000
    with pytest.raises(BadRequest):
        admin.token_management.create_obo_token("svc", lifetime_seconds=7200)
    obo = admin.token_management.create_obo_token("svc", comment="ci")
    assert obo.token_info is not None and obo.token_value
    assert obo.token_info.owner_id == int(sp_id) and obo.token_info.created_by_username == "admin"
    assert 0 < (obo.token_info.expiry_time or 0) <= time.time() * 1000 + 3_600_000
    assert server.client(obo.token_value).get(BASE).status_code == 200


def test_max_token_lifetime_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().max_token_lifetime_s == 90 * 86_400
    monkeypatch.setenv("MOESERVE_MAX_TOKEN_LIFETIME_S", "none")
    assert Settings().max_token_lifetime_s is None
    monkeypatch.setenv("MOESERVE_MAX_TOKEN_LIFETIME_S", "86400")
    assert Settings().max_token_lifetime_s == 86_400
    monkeypatch.delenv("MOESERVE_MAX_TOKEN_LIFETIME_S")
    assert Settings(max_token_lifetime_s=None).max_token_lifetime_s is None
    with pytest.raises(ValueError, match="max_token_lifetime_s"):
        Settings(max_token_lifetime_s=0)


def test_a_short_lived_token_cannot_mint_a_longer_lived_one(server: LiveServer) -> None:
    short = mint(server, ADMIN_TOKEN, lifetime_seconds=60)
    bound = short["token_info"]["expiry_time"]
    assert bound != -1
    for body in ({}, {"lifetime_seconds": 0}, {"lifetime_seconds": 86_400}):
        child = mint(server, short["token_value"], **body)
        assert child["token_info"]["expiry_time"] != -1, body  # was: never expires
        assert child["token_info"]["expiry_time"] <= bound, body
    shorter = mint(server, short["token_value"], lifetime_seconds=10)["token_info"]
    assert shorter["expiry_time"] < bound  # a shorter lifetime is kept as asked

    # a principal added with the short token gets a first token no longer-lived
    sp_id, sp_token = add(
        server,
        default_workspace(server),
        "bot",
        kind="service-principals",
        token=short["token_value"],
    )
    first = [t for t in sdk(server).token_management.list() if t.owner_id == int(sp_id)]
    assert [t.expiry_time is not None and 0 < t.expiry_time <= bound for t in first] == [True]

    # once minted, a token is independent of its minter: revoking the minter leaves it
    child = mint(server, short["token_value"], lifetime_seconds=30)["token_value"]
    sdk(server).token_management.delete(short["token_info"]["token_id"])
    assert server.client(short["token_value"]).get(BASE).status_code == 401
    assert server.client(child).get(BASE).status_code == 200
    assert server.client(sp_token).get(BASE).status_code == 200
