"""A live control plane whose Ray Serve replicas run the instant engine (no model
compute: the serving path is real — Ray Serve apps, handles, streaming — only the
tokens are cheap), plus helpers that read the usage ledger back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from openai import AsyncOpenAI, OpenAI
from ray import serve
from sqlalchemy import create_engine, text

from control_plane.endpoints.capacity import APP_PREFIX
from control_plane.settings import Settings
from deploy.providers.local import LocalRayProvider
from tests.control_plane.conftest import (
    ADMIN_TOKEN,
    LiveServer,
    live_server,
    make_settings,
    wait_for,
)
from workers.testing.instant import instant_engine_factory


@contextmanager
def instant_ray_server(root: Path, **overrides: Any) -> Iterator[LiveServer]:
    """The control plane on SQLite over the session's Ray; every replica instant."""
    values: dict[str, Any] = {"shared_endpoints": [], "retire_grace_s": 2.0}
    values.update(overrides)
    settings: Settings = make_settings(f"sqlite:///{root / 'moeserve.db'}", root, **values)
    provider = LocalRayProvider(engine_factory=instant_engine_factory)
    with live_server(settings, provider) as live:
        try:
            yield live
        finally:
            with live.client() as http:
                for endpoint in http.get("/api/2.0/serving-endpoints").json().get("endpoints", []):
                    http.delete(f"/api/2.0/serving-endpoints/{endpoint['name']}")
            wait_for(lambda: not _moeserve_apps(), timeout=30, what="apps to be deleted")


def _moeserve_apps() -> set[str]:
    return {name for name in serve.status().applications if name.startswith(APP_PREFIX)}


def create_endpoint(
    http: httpx.Client,
    name: str,
    entities: list[dict[str, Any]] | None = None,
    routes: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Create an endpoint (default: one dbrx-tiny entity) and wait until it is READY."""
    entities = entities or [
        {"entity_name": "dbrx-tiny", "entity_version": "1", "workload_size": "Small"}
    ]
    config: dict[str, Any] = {"served_entities": entities}
    if routes is not None:
        config["traffic_config"] = {"routes": routes}
    response = http.post(
        "/api/2.0/serving-endpoints", json={"name": name, "config": config, **extra}
    )
    assert response.status_code == 200, response.text
    return wait_ready(http, name)


def wait_ready(http: httpx.Client, name: str, version: int | None = None) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        body: dict[str, Any] = http.get(f"/api/2.0/serving-endpoints/{name}").json()
        state = body["state"]
        if state["config_update"] == "UPDATE_FAILED":
            raise AssertionError(f"endpoint {name} failed: {body}")
        done = state["ready"] == "READY" and state["config_update"] == "NOT_UPDATING"
        if done and (version is None or body["config"]["config_version"] == version):
            return body
        return None

    result: dict[str, Any] = wait_for(ready, timeout=90, what=f"endpoint {name} READY")
    return result


def openai_client(server: LiveServer, token: str = ADMIN_TOKEN) -> OpenAI:
    return OpenAI(api_key=token, base_url=f"{server.url}/serving-endpoints", max_retries=0)


def async_openai_client(server: LiveServer, token: str = ADMIN_TOKEN) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=token, base_url=f"{server.url}/serving-endpoints", max_retries=0)


def usage_rows(server: LiveServer, endpoint: str) -> list[dict[str, Any]]:
    """The endpoint's usage rows, read straight from the database (not through the API)."""
    engine = create_engine(server.plane.settings.resolved_database_url())
    try:
        with engine.connect() as connection:
            result = connection.execute(
                text("SELECT * FROM endpoint_usage WHERE endpoint_name = :name"), {"name": endpoint}
            )
            return [dict(row._mapping) for row in result]
    finally:
        engine.dispose()
