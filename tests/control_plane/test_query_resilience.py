"""Routing and resilience of the query path on real Ray Serve apps (instant engine):
traffic split, fallback before the first token, bounded queues (backpressure) and scale
from zero with a bounded wait."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from billing.capacity import CapacityInterval
from control_plane.settings import GatewaySettings, WorkerDefaults
from tests.control_plane.conftest import ADMIN_TOKEN, LiveServer, wait_for
from tests.control_plane.query_fixtures import create_endpoint, instant_ray_server, usage_rows

SUFFIX = uuid.uuid4().hex[:6]
MAX_ONGOING = 2  # per replica; with no gateway queue, 2 requests per entity at a time
STREAM_IDLE_S = 1.5  # gateway.stream_idle_timeout_s here

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with instant_ray_server(
        tmp_path_factory.mktemp("resilience"),
        workers=WorkerDefaults(max_ongoing_requests=MAX_ONGOING, downscale_delay_s=1),
        gateway=GatewaySettings(
            max_queued_requests=0,
            scale_from_zero_timeout_s=3,
            first_token_timeout_s=10,
            stream_idle_timeout_s=STREAM_IDLE_S,
            wake_retry_after_s=7,
            lookup_cache_ttl_s=0,
        ),
    ) as live:
        yield live


def _entity(name: str, **env: str) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "name": name,
        "entity_name": "dbrx-tiny",
        "entity_version": "1",
        "workload_size": "Small",
    }
    if env:
        entity["environment_vars"] = env
    return entity


def _ask(http: httpx.Client, endpoint: str) -> httpx.Response:
    return http.post(
        f"/serving-endpoints/{endpoint}/invocations", json={"messages": HI, "max_tokens": 1}
    )


def test_traffic_split_follows_weights(server: LiveServer) -> None:
    name = f"split-{SUFFIX}"
    with server.client() as http:
        create_endpoint(
            http,
            name,
            [_entity("a"), _entity("b", MOESERVE_INSTANT_TOKENS="2")],
            routes=[
                {"served_entity_name": "a", "traffic_percentage": 80},
                {"served_entity_name": "b", "traffic_percentage": 20},
            ],
        )
        served = Counter(_ask(http, name).headers["served-model-name"] for _ in range(200))
    assert set(served) == {"a", "b"}
    assert 120 <= served["a"] <= 190  # 80% of 200 = 160, well inside binomial spread


def test_fallback_retries_once_before_the_first_token(server: LiveServer) -> None:
    name = f"fallback-{SUFFIX}"
    routes = [
        {"served_entity_name": "broken", "traffic_percentage": 100},
        {"served_entity_name": "spare", "traffic_percentage": 0},
    ]
    with server.client() as http:
        create_endpoint(
            http,
            name,
            [_entity("broken", MOESERVE_INSTANT_FAIL_AFTER_TOKENS="0"), _entity("spare")],
            routes,
        )
        failing = _ask(http, name)
        assert failing.status_code == 503, failing.text  # no fallback configured yet
        assert failing.headers["Retry-After"].isdigit()
        gateway = {"fallback_config": {"enabled": True}}
        assert (
            http.put(f"/api/2.0/serving-endpoints/{name}/ai-gateway", json=gateway).status_code
            == 200
        )
        answered = [_ask(http, name) for _ in range(5)]
        assert [r.status_code for r in answered] == [200] * 5
        assert {r.headers["served-model-name"] for r in answered} == {"spare"}
        with http.stream(
            "POST",
            f"/serving-endpoints/{name}/invocations",
            json={"messages": HI, "max_tokens": 2, "stream": True},
        ) as stream:
            assert stream.status_code == 200 and stream.headers["served-model-name"] == "spare"
            assert [line for line in stream.iter_lines() if line][-1] == "data: [DONE]"
    rows = usage_rows(server, name)
    assert len(rows) == 7  # one per accepted request, retries included in that one row
    assert sorted(r["status_code"] for r in rows) == [200] * 6 + [503]
    assert Counter(r["served_entity_id"] for r in rows if r["status_code"] == 200) == {"spare": 6}


def test_saturated_entity_rejects_at_once_with_retry_after(server: LiveServer) -> None:
    name = f"busy-{SUFFIX}"
    with server.client() as http:
        create_endpoint(http, name, [_entity("slow", MOESERVE_INSTANT_TOKEN_DELAY_S="0.5")])

    async def burst() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as client:
            body = {"messages": HI, "max_tokens": 2}
            calls = [
                client.post(f"/serving-endpoints/{name}/invocations", json=body) for _ in range(6)
            ]
            return list(await asyncio.gather(*calls))

    started = time.monotonic()
    responses = asyncio.run(burst())
    elapsed = time.monotonic() - started
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: MAX_ONGOING, 503: 6 - MAX_ONGOING}, statuses
    rejected = [r for r in responses if r.status_code == 503]
    assert all(r.headers["Retry-After"] == "1" and "saturated" in r.text for r in rejected)
    assert elapsed < 5  # the rejected ones did not wait in a queue


def test_scale_from_zero_wakes_with_a_bounded_wait(server: LiveServer) -> None:
    name = f"parked-{SUFFIX}"
    entity = {**_entity("lazy", MOESERVE_INSTANT_START_DELAY_S="6"), "scale_to_zero_enabled": True}
    with server.client() as http:
        created = create_endpoint(http, name, [entity])

        def parked() -> bool:
            statuses = server.plane.reconciler.apps
            apps = [s for n, s in statuses.items() if n.startswith("ms-" + created["id"])]
            return bool(apps) and all(s.running_replicas == 0 for s in apps)

        wait_for(parked, timeout=60, what="the entity to scale to zero")
        too_slow = _ask(http, name)  # the replica needs 6 s to start; the wait is 3 s
        assert too_slow.status_code == 503, too_slow.text
        assert too_slow.headers["Retry-After"] == "7" and "scaled to zero" in too_slow.text
        woke = wait_for(lambda: _answered(http, name), timeout=60, what="the entity to wake")
        assert woke.headers["served-model-name"] == "lazy"
    with server.client() as http:
        metrics = http.get("/metrics").text
        workspace = http.get("/api/2.0/workspaces").json()["workspaces"][0]["workspace_id"]
    labels = f'endpoint="{name}",endpoint_id="{created["id"]}",served_entity="lazy"'
    assert f'moeserve_scale_from_zero_wakes_total{{{labels},workspace="{workspace}"}}' in metrics

    def timeline() -> list[tuple[bool, bool]]:
        with server.plane.sessions() as session:
            rows = session.scalars(
                select(CapacityInterval)
                .where(CapacityInterval.endpoint_id == created["id"])
                .order_by(CapacityInterval.id)
            ).all()
            return [(row.parked, row.woke_from_zero) for row in rows]

    # Running, then parked (billed nothing), then woken (one LAUNCH record): for billing.
    expected = [(False, False), (True, False), (False, True)]
    wait_for(lambda: timeline()[:3] == expected, timeout=10, what="the park and wake recorded")


def _answered(http: httpx.Client, name: str) -> httpx.Response | None:
    response = _ask(http, name)
    return response if response.status_code == 200 else None


def test_error_after_the_first_byte_is_an_error_chunk(server: LiveServer) -> None:
    name = f"midway-{SUFFIX}"
    with server.client() as http:
        create_endpoint(http, name, [_entity("flaky", MOESERVE_INSTANT_FAIL_AFTER_TOKENS="2")])
        with http.stream(
            "POST",
            f"/serving-endpoints/{name}/invocations",
            json={"messages": HI, "max_tokens": 4, "stream": True},
        ) as response:
            assert response.status_code == 200  # the stream had started
            events = [
                json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")
            ]
    assert [e["choices"][0]["delta"]["content"] for e in events[:-1]] == [" tok1000", " tok1001"]
    assert set(events[-1]) == {"error"} and "injected failure" in events[-1]["error"]["message"]
    [row] = usage_rows(server, name)
    assert (row["status_code"], row["output_token_count"]) == (500, 2)  # billed what was sent


def test_a_replica_silent_mid_stream_ends_the_stream_with_an_error_event(
    server: LiveServer,
) -> None:
    """A replica frozen rather than dead sends nothing more: after
    `gateway.stream_idle_timeout_s` the stream ends with an error event and the token it
    did send is billed (before: the stream hung until the whole answer's deadline)."""
    name = f"stalled-{SUFFIX}"
    with server.client() as http:
        create_endpoint(http, name, [_entity("stuck", MOESERVE_INSTANT_TOKEN_DELAY_S="4")])
        with http.stream(
            "POST",
            f"/serving-endpoints/{name}/invocations",
            json={"messages": HI, "max_tokens": 3, "stream": True},
        ) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            events = [json.loads(next(line for line in lines if line.startswith("data: {"))[6:])]
            first_at = time.monotonic()
            events += [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
            ended_after = time.monotonic() - first_at
    assert [e["choices"][0]["delta"]["content"] for e in events[:-1]] == [" tok1000"]
    assert set(events[-1]) == {"error"}, events[-1]
    assert f"sent nothing for {STREAM_IDLE_S:g} s" in events[-1]["error"]["message"]
    assert STREAM_IDLE_S - 0.2 < ended_after < 4 - 0.2  # before the next token would come
    [row] = usage_rows(server, name)
    assert (row["status_code"], row["output_token_count"]) == (500, 1)
