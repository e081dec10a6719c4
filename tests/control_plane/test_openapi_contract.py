"""`/openapi.json` is the truth: every route declares what it answers, the document is a
valid OpenAPI 3.1 description, and real responses of a sample of routes — management,
tenancy, registry, query and billing — validate against the schema their route declares.
The per-endpoint query OpenAPI is valid too."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from types import UnionType
from typing import Any, Union, get_args, get_origin

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from pydantic import BaseModel

from control_plane import create_app
from control_plane.app import routers
from tests.control_plane.conftest import LiveServer, make_settings
from tests.control_plane.query_fixtures import create_endpoint, instant_ray_server

SUFFIX = uuid.uuid4().hex[:6]
CHAT, EMBED = f"contract-{SUFFIX}", f"contract-embed-{SUFFIX}"
MESSAGES = [{"role": "user", "content": "hi"}]


# An OpenAPI document is itself the schema of what it answers.
FREE_FORM = {"/api/2.0/serving-endpoints/{name}/openapi"}


def _is_model(annotation: Any) -> bool:
    options = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else ()
    if options:
        return all(_is_model(option) for option in options)
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def test_every_route_declares_what_it_answers() -> None:
    """A pydantic response model, or (text, CSV, Prometheus) its other media type. The
    routes come from the routers the app includes (on FastAPI 0.165 `app.routes` holds
    included-router wrappers, not the `APIRoute`s), and the count guards against a walk
    that finds nothing to check."""
    routes = [r for router in routers() for r in router.routes if isinstance(r, APIRoute)]
    assert len(routes) > 50, f"found only {len(routes)} routes to check"
    undeclared = []
    for route in routes:
        if route.path in FREE_FORM:
            continue
        other_media = list(route.responses.get(200, {}).get("content", {}))
        if not _is_model(route.response_model) and not other_media:
            undeclared.append(f"{sorted(route.methods or ())} {route.path}")
    assert undeclared == []


@pytest.fixture(scope="module")
def server(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with instant_ray_server(tmp_path_factory.mktemp("contract")) as live, live.client() as http:
        create_endpoint(http, CHAT, tags=[{"key": "team", "value": "search"}])
        create_endpoint(http, EMBED, task="llm/v1/embeddings")
        yield live


@pytest.fixture(scope="module")
def openapi(server: LiveServer) -> dict[str, Any]:
    with server.client() as http:
        document: dict[str, Any] = http.get("/openapi.json").json()
    return document


def test_the_document_is_valid_openapi(openapi: dict[str, Any]) -> None:
    validate(openapi)
    assert len(openapi["paths"]) >= 30


def _matches(openapi: dict[str, Any], method: str, path: str, response: httpx.Response) -> None:
    """`response` validates against the 200 schema `path`'s route declares for `method`."""
    assert response.status_code == 200, response.text
    template = next(
        t for t in openapi["paths"] if re.fullmatch(re.sub(r"\{[^/]+\}", "[^/]+", t), path)
    )
    declared = openapi["paths"][template][method]["responses"]["200"]["content"]
    schema = {**declared["application/json"]["schema"], "components": openapi["components"]}
    errors = list(Draft202012Validator(schema).iter_errors(response.json()))
    assert errors == [], f"{method.upper()} {path}: {[e.message for e in errors]}"


def test_real_responses_match_their_declared_schemas(
    server: LiveServer, openapi: dict[str, Any]
) -> None:
    base = "/api/2.0/serving-endpoints"
    with server.client() as http:
        endpoint = http.get(f"{base}/{CHAT}").json()

        def get(path: str) -> None:
            _matches(openapi, "get", path, http.get(path))

        def send(method: str, path: str, body: dict[str, Any]) -> None:
            _matches(openapi, method, path, http.request(method.upper(), path, json=body))

        for path in (
            base,
            f"{base}/{CHAT}",
            f"{base}/{CHAT}/openapi",
            f"{base}/{CHAT}/served-models/dbrx-tiny-1/build-logs",
            f"{base}/get-model-optimization-info/dbrx-tiny/1",
            f"/api/2.0/permissions/serving-endpoints/{endpoint['id']}",
            "/api/2.0/token/list",
            "/api/2.0/workspaces",
            "/api/2.0/models",
            "/.well-known/databricks-config",
            "/serving-endpoints/models",
            "/api/2.0/billing/usage",
            "/api/2.0/billing/endpoint-usage",
            "/api/2.0/billing/list-prices",
            "/api/2.0/billing/invoices",
            "/api/2.0/audit-log",
        ):
            get(path)
        send("patch", f"{base}/{CHAT}/tags", {"add_tags": [{"key": "env", "value": "dev"}]})
        send("put", f"{base}/{CHAT}/ai-gateway", {"usage_tracking_config": {"enabled": True}})
        send("put", f"{base}/{CHAT}/rate-limits", {"rate_limits": [{"calls": 100}]})
        send("post", "/api/2.0/token/create", {"comment": "contract"})
        query = {"messages": MESSAGES, "max_tokens": 2, "logprobs": True, "top_logprobs": 2}
        send("post", f"/serving-endpoints/{CHAT}/invocations", query)
        send("post", "/serving-endpoints/chat/completions", {**query, "model": CHAT})
        send("post", "/serving-endpoints/embeddings", {"model": EMBED, "input": ["a", "b"]})
        send(
            "post",
            f"{base}",
            {
                "name": f"another-{SUFFIX}",
                "config": {
                    "served_entities": [{"entity_name": "dbrx-tiny", "entity_version": "1"}]
                },
            },
        )
        _matches(
            openapi, "delete", f"{base}/another-{SUFFIX}", http.delete(f"{base}/another-{SUFFIX}")
        )


def test_each_endpoints_query_openapi_is_valid(server: LiveServer) -> None:
    with server.client() as http:
        for name in (CHAT, EMBED):
            validate(http.get(f"/api/2.0/serving-endpoints/{name}/openapi").json())


def test_schema_generation_needs_no_running_plane(tmp_path: Any) -> None:
    app = create_app(make_settings(f"sqlite:///{tmp_path / 'db'}", tmp_path))
    validate(TestClient(app).get("/openapi.json").json())
