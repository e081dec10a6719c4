"""`GET /api/2.0/billing/endpoint-usage` never fails on what is stored (rows written
straight into the table, past every check of the query edge), and pages with Databricks'
`page_size` / `page_token` / `next_page_token` in a stable order."""

from __future__ import annotations

import base64
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import JSON, Text, cast, literal
from sqlalchemy.sql.elements import ColumnElement

from billing.db import BillingBase
from billing.ledger import EndpointUsage
from control_plane.db.models import Workspace
from tests.control_plane.conftest import LiveServer
from tests.control_plane.test_tenancy import default_workspace

ROUTE = "/api/2.0/billing/endpoint-usage"
TABLE = BillingBase.metadata.tables[EndpointUsage.__tablename__]
T0 = datetime(2026, 11, 26, 14, 0, tzinfo=UTC)


def _account(server: LiveServer, workspace_id: str) -> str:
    with server.plane.sessions() as session:
        workspace = session.get(Workspace, workspace_id)
        assert workspace is not None
        return workspace.account_id


def _insert(
    server: LiveServer,
    request_id: str,
    *,
    workspace_id: str,
    account_id: str,
    at: datetime = T0,
    context_json: str | None = None,
    **overrides: Any,
) -> None:
    """One row written straight into `endpoint_usage`, `usage_context` as raw JSON text
    (whatever the database's JSON column takes)."""
    engine = server.plane.engine
    context: ColumnElement[Any] | None = None
    if context_json is not None:
        raw = literal(context_json, Text)
        context = cast(raw, JSON) if engine.dialect.name == "postgresql" else raw
    values: dict[str, Any] = {
        "databricks_request_id": request_id,
        "client_request_id": f"client-{request_id}",
        "requester": "someone@example.com",
        "status_code": 200,
        "request_time": at,
        "served_entity_id": "dbrx-tiny-1",
        "entity_name": "dbrx-tiny",
        "entity_version": "1",
        "model_family": "dbrx",
        "workload_type": "CPU",
        "endpoint_name": "chat",
        "endpoint_id": "e" * 32,
        "workspace_id": workspace_id,
        "account_id": account_id,
        "input_token_count": 3,
        "output_token_count": 4,
        "request_streaming": False,
        "usage_context": context,
        **overrides,
    }
    with engine.begin() as connection:
        connection.execute(TABLE.insert().values(**values))


def _listed(admin: httpx.Client, **params: Any) -> dict[str, Any]:
    response = admin.get(ROUTE, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_odd_stored_rows_never_make_the_listing_fail(instant_server: LiveServer) -> None:
    home = default_workspace(instant_server)
    account = _account(instant_server, home)
    odd = {
        "surrogates": '{"team": "a\\ud800b", "\\udfffkey": "v"}',
        "nul": '{"team": "a\\u0000b"}',
        "not-strings": '{"n": 1, "deep": {"a": [1, "\\ud800"]}, "none": null, "yes": true}',
        "not-an-object": '["a", "list"]',
        "null": "null",
        "big": json.dumps({"blob": "x" * 100_000}),
    }
    if instant_server.plane.engine.dialect.name == "sqlite":  # PostgreSQL checks JSON syntax
        odd["not-json"] = "{not json"
    for minute, (name, document) in enumerate(odd.items()):
        _insert(
            instant_server,
            name,
            workspace_id=home,
            account_id=account,
            at=T0 + timedelta(minutes=minute),
            context_json=document,
        )
    _insert(instant_server, "no-context", workspace_id=home, account_id=account, at=T0)
    with instant_server.client() as admin:
        rows = {
            row["databricks_request_id"]: row
            for row in _listed(admin, workspace_id=home)["endpoint_usage"]
        }
        assert rows["surrogates"]["usage_context"] == {"team": "a\ufffdb", "\ufffdkey": "v"}
        assert rows["nul"]["usage_context"] == {"team": "a\ufffdb"}
        assert rows["not-strings"]["usage_context"] == {
            "n": "1",
            "deep": '{"a": [1, "\\ud800"]}',
            "none": "null",
            "yes": "true",
        }
        assert rows["not-an-object"]["usage_context"] is None
        assert rows["null"]["usage_context"] is None
        assert rows["big"]["usage_context"] == {"blob": "x" * 100_000}
        assert rows["no-context"]["usage_context"] is None
        if "not-json" in odd:
            assert rows["not-json"]["usage_context"] is None
        exported = admin.get(ROUTE, params={"workspace_id": home, "format": "csv"})
        assert exported.status_code == 200, exported.text
        table = {r["databricks_request_id"]: r for r in csv.DictReader(io.StringIO(exported.text))}
        assert set(table) == set(rows)
        assert json.loads(table["surrogates"]["usage_context"]) == {
            "team": "a\ufffdb",
            "\ufffdkey": "v",
        }


def test_filters_no_stored_value_could_match_are_400s_not_database_errors(
    instant_server: LiveServer,
) -> None:
    with instant_server.client() as admin:
        for params in (
            {"endpoint_name": "chat\x00"},
            {"workspace_id": "ws\x00"},
            {"endpoint_name": "n" * 64},
        ):
            response = admin.get(ROUTE, params=params)
            assert response.status_code == 400, (params, response.text)
            assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
            assert "\x00" not in response.json()["message"]


def _token(document: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).decode().rstrip("=")


def test_pages_follow_a_stable_order_with_page_tokens(instant_server: LiveServer) -> None:
    home = default_workspace(instant_server)
    account = _account(instant_server, home)
    # Ties in request_time are broken by request id; insertion order is neither.
    placed = [("r-g", 3), ("r-c", 0), ("r-a", 0), ("r-e", 2), ("r-b", 0), ("r-d", 1), ("r-f", 2)]
    for request_id, minute in placed:
        _insert(
            instant_server,
            request_id,
            workspace_id=home,
            account_id=account,
            at=T0 + timedelta(minutes=minute, microseconds=7),
        )
    expected = sorted(placed, key=lambda p: (p[1], p[0]))
    with instant_server.client() as admin:
        everything = _listed(admin, workspace_id=home)
        assert [r["databricks_request_id"] for r in everything["endpoint_usage"]] == [
            request_id for request_id, _ in expected
        ]
        assert "next_page_token" not in everything  # one page holds them all

        pages: list[list[str]] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"workspace_id": home, "page_size": 3}
            if token is not None:
                params["page_token"] = token
            page = _listed(admin, **params)
            pages.append([r["databricks_request_id"] for r in page["endpoint_usage"]])
            token = page.get("next_page_token")
            if token is None:
                break
            if len(pages) == 1:
                # Rows written while paging: one before the cursor is not shown later
                # (no page shifts), one after it is.
                _insert(
                    instant_server,
                    "r-0-late",
                    workspace_id=home,
                    account_id=account,
                    at=T0 - timedelta(hours=1),
                )
                _insert(
                    instant_server,
                    "r-h-late",
                    workspace_id=home,
                    account_id=account,
                    at=T0 + timedelta(minutes=9),
                )
        assert pages == [["r-a", "r-b", "r-c"], ["r-d", "r-e", "r-f"], ["r-g", "r-h-late"]]

        # The same pages in CSV, the token in a header; and with a time range.
        first_csv = admin.get(ROUTE, params={"workspace_id": home, "page_size": 2, "format": "csv"})
        assert first_csv.status_code == 200
        assert [
            r["databricks_request_id"] for r in csv.DictReader(io.StringIO(first_csv.text))
        ] == [
            "r-0-late",
            "r-a",
        ]
        next_csv = admin.get(
            ROUTE,
            params={
                "workspace_id": home,
                "page_size": 2,
                "format": "csv",
                "page_token": first_csv.headers["X-Next-Page-Token"],
            },
        )
        assert [r["databricks_request_id"] for r in csv.DictReader(io.StringIO(next_csv.text))] == [
            "r-b",
            "r-c",
        ]
        ranged = _listed(
            admin,
            workspace_id=home,
            start_time="2026-11-26T14:01:00Z",
            end_time="2026-11-26T14:03:00Z",
            page_size=2,
        )
        assert [r["databricks_request_id"] for r in ranged["endpoint_usage"]] == ["r-d", "r-e"]
        rest = _listed(
            admin,
            workspace_id=home,
            start_time="2026-11-26T14:01:00Z",
            end_time="2026-11-26T14:03:00Z",
            page_size=2,
            page_token=ranged["next_page_token"],
        )
        assert [r["databricks_request_id"] for r in rest["endpoint_usage"]] == ["r-f"]
        assert "next_page_token" not in rest


def test_bad_page_tokens_and_sizes_are_400s(instant_server: LiveServer) -> None:
    bad_tokens = [
        "garbage!",
        "%%%",
        _token({"t": "yesterday", "id": "r-a"}),
        _token({"t": "2026-11-26T14:00:00", "id": "r-a"}),  # no zone
        _token({"t": "2026-11-26T14:00:00Z", "id": "r-\u0000"}),
        _token({"t": "2026-11-26T14:00:00Z", "id": "r-\ud800"}),
        _token({"t": "2026-11-26T14:00:00Z", "id": "x" * 65}),
        _token({"t": "2026-11-26T14:00:00Z"}),
        _token(["2026-11-26T14:00:00Z", "r-a"]),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ]
    with instant_server.client() as admin:
        for token in bad_tokens:
            response = admin.get(ROUTE, params={"page_token": token})
            assert response.status_code == 400, (token, response.text)
            body = response.json()
            assert body["error_code"] == "INVALID_PARAMETER_VALUE"
            assert "page_token" in body["message"] and token not in body["message"]
        for size in (0, -1, 10_001, "many"):
            response = admin.get(ROUTE, params={"page_size": size})
            assert response.status_code == 400, (size, response.text)
            assert "page_size" in response.json()["message"]
        # The declared answer names the token (the OpenAPI clients are generated from).
        document = admin.get("/openapi.json").json()
        ok = document["paths"][ROUTE]["get"]["responses"]["200"]["content"]["application/json"]
        declared = document["components"]["schemas"][ok["schema"]["$ref"].rsplit("/", 1)[1]]
        assert "next_page_token" in declared["properties"]
        parameters = {p["name"] for p in document["paths"][ROUTE]["get"]["parameters"]}
        assert {"page_size", "page_token"} <= parameters
