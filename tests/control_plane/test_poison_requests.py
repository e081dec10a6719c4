"""Issue 14, findings 3 and 9, end to end on PostgreSQL: poison requests (NUL or a lone
surrogate in `client_request_id` or `usage_context`) sent concurrently among other callers'
requests through the real query API (Ray Serve replicas running the instant engine) are
400s at the edge, and every other request is answered and leaves its usage row, which the
billing listing then pages through."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ray import serve

from bench.scratch_db import postgres_available, scratch_postgres
from control_plane.endpoints.capacity import APP_PREFIX
from deploy.providers.local import LocalRayProvider
from tests.control_plane.conftest import ADMIN_TOKEN, LiveServer, live_server, make_settings
from tests.control_plane.conftest import wait_for as wait_until
from tests.control_plane.query_fixtures import create_endpoint, usage_rows
from workers.testing.instant import instant_engine_factory

NAME = f"poison-{uuid.uuid4().hex[:6]}"
VICTIMS = 120
POISON_EVERY = 2  # one poison request after every other victim: 60 of them
CONCURRENCY = VICTIMS + VICTIMS // POISON_EVERY  # every request in flight at once


@pytest.fixture(scope="module")
def server(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    if not postgres_available():
        pytest.fail("PostgreSQL is not answering on 127.0.0.1:5432 (start it: see docs/testing.md)")
    root: Path = tmp_path_factory.mktemp("poison")
    with scratch_postgres("moeserve_test") as url:
        settings = make_settings(url, root, shared_endpoints=[], retire_grace_s=2.0)
        provider = LocalRayProvider(engine_factory=instant_engine_factory)
        with live_server(settings, provider) as live:
            try:
                with live.client() as http:
                    create_endpoint(http, NAME)
                yield live
            finally:
                with live.client() as http:
                    http.delete(f"/api/2.0/serving-endpoints/{NAME}")
                wait_until(
                    lambda: (
                        not any(app.startswith(APP_PREFIX) for app in serve.status().applications)
                    ),
                    timeout=30,
                    what="apps to be deleted",
                )


def _poison(i: int) -> tuple[dict[str, Any], str]:
    """A poison body's extras and the field its 400 must name. Half of them carry NUL in
    `client_request_id`, which PostgreSQL refuses when the row is written."""
    cases: list[tuple[dict[str, Any], str]] = [
        ({"client_request_id": f"poison-{i}-\x00"}, "client_request_id"),
        ({"usage_context": {"team": f"poison-{i}-\udfff"}}, "usage_context.team"),
        ({"client_request_id": f"\x00poison-{i}"}, "client_request_id"),
        ({"client_request_id": f"poison-{i}-\ud800"}, "client_request_id"),
        ({"client_request_id": f"poison-{i}\x00\x00"}, "client_request_id"),
        ({"usage_context": {"team": f"poison-{i}-\x00"}}, "usage_context.team"),
    ]
    return cases[(i // POISON_EVERY) % len(cases)]


async def _send(
    http: httpx.AsyncClient, gate: asyncio.Semaphore, body: dict[str, Any], route: str
) -> tuple[int, str]:
    # json.dumps escapes NUL and surrogates ("\u0000", "\ud800"), as a client's encoder
    # does: the server's json.loads turns them back into the characters.
    content = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    async with gate:
        try:
            if not body.get("stream"):
                response = await http.post(route, content=content, headers=headers)
                return response.status_code, response.text
            async with http.stream("POST", route, content=content, headers=headers) as streamed:
                text = (await streamed.aread()).decode()
                return streamed.status_code, text
        except httpx.TransportError as cut:  # a stream the server broke off
            return -1, f"cut: {type(cut).__name__}"


def test_poison_requests_are_refused_and_every_other_callers_row_is_stored(
    server: LiveServer,
) -> None:
    async def traffic() -> tuple[list[tuple[int, str]], list[tuple[int, str]], list[str]]:
        gate = asyncio.Semaphore(CONCURRENCY)
        victims: list[Any] = []
        poison: list[Any] = []
        fields: list[str] = []
        async with httpx.AsyncClient(
            base_url=f"{server.url}/serving-endpoints",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=120,
        ) as http:
            for i in range(VICTIMS):
                body: dict[str, Any] = {
                    "messages": [{"role": "user", "content": f"question {i}"}],
                    "max_tokens": 2,
                    "client_request_id": f"victim-{i:03}",
                    "usage_context": {"tenant": f"t{i % 5}"},
                }
                if i % 4 == 0:
                    body["stream"] = True
                route = f"/{NAME}/invocations"
                if i % 2:
                    body, route = {**body, "model": NAME}, "/chat/completions"
                victims.append(_send(http, gate, body, route))
                if i % POISON_EVERY == 0:
                    extras, field = _poison(i)
                    messages = [{"role": "user", "content": f"poison {i}"}]
                    bad = {"messages": messages, "max_tokens": 2, **extras}
                    poison.append(_send(http, gate, bad, f"/{NAME}/invocations"))
                    fields.append(field)
            # Interleaved as they were built, all in flight together.
            done = await asyncio.gather(*victims, *poison)
        return done[:VICTIMS], done[VICTIMS:], fields

    victims, poison, fields = asyncio.run(traffic())

    failed_victims = [
        (i, status, text[-200:])
        for i, (status, text) in enumerate(victims)
        if status != 200 or (i % 4 == 0 and not text.rstrip().endswith("data: [DONE]"))
    ]
    rows = usage_rows(server, NAME)
    stored = sorted(str(row["client_request_id"]) for row in rows)
    expected = [f"victim-{i:03}" for i in range(VICTIMS)]
    missing = sorted(set(expected) - set(stored))
    assert not failed_victims and not missing, (
        f"{len(failed_victims)} of {VICTIMS} victims failed or were cut, "
        f"{len(missing)} victim rows missing; first failures: {failed_victims[:3]}"
    )
    for (status, text), field in zip(poison, fields, strict=True):
        assert status == 400, text
        error = json.loads(text)
        assert error["error_code"] == "INVALID_PARAMETER_VALUE"
        assert field in error["message"]
        assert "\\u0000" in error["message"] or "surrogate" in error["message"]
        assert "poison-" not in error["message"]  # the value is never echoed

    assert stored == expected  # every victim once, and no poison request was accepted
    by_client = {row["client_request_id"]: row for row in rows}
    assert by_client["victim-007"]["usage_context"] == {"tenant": "t2"}

    # The billing listing answers for this workspace and pages through every victim row.
    listed: list[str] = []
    params: dict[str, Any] = {"endpoint_name": NAME, "page_size": 50}
    with server.client() as admin:
        for _ in range(10):
            response = admin.get("/api/2.0/billing/endpoint-usage", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            listed += [row["client_request_id"] for row in page["endpoint_usage"]]
            if "next_page_token" not in page:
                break
            params["page_token"] = page["next_page_token"]
    assert sorted(listed) == stored
