"""Usage exactness: 1,000 mixed queries through the HTTP gateway, then the ledger is
compared with what the clients received.

The mix: plain chat completions, streams with `include_usage`, streams the client abandons
after the first chunk, prompts longer than the context (a 400 found after acceptance), and
calls of a user limited to 20 calls/minute (429s, never accepted). Every accepted query
must leave exactly one row (no duplicates) whose token counts equal what its client saw:
`usage` for answered queries, the chunks read for abandoned streams (each chunk of the
instant engine is one token), nothing for the 400s.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.control_plane.conftest import ADMIN_TOKEN, LiveServer, wait_for
from tests.control_plane.query_fixtures import create_endpoint, instant_ray_server, usage_rows
from workers.tokenizer import load_tokenizer

NAME = f"exact-{uuid.uuid4().hex[:6]}"
TOTAL = 1000
LIMITED_CALLS = 20
TOKEN_DELAY_S = 0.1  # streams last 4 x 0.1 s
# Abandoned streams go to a slower twin (a token every 2 s), so that the server notices the
# client left long before it has another token to send: the tokens billed are then exactly
# the one chunk the client read.
SLOW = f"{NAME}-slow"
SLOW_TOKEN_DELAY_S = 2.0


@dataclass
class Seen:
    """What one client call saw."""

    kind: str
    status: int
    prompt_tokens: int = 0
    completion_tokens: int = 0


@pytest.fixture(scope="module")
def server(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with instant_ray_server(tmp_path_factory.mktemp("exact")) as live, live.client() as http:
        entity = {
            "entity_name": "dbrx-tiny",
            "entity_version": "1",
            "workload_size": "Small",
            "environment_vars": {"MOESERVE_INSTANT_TOKEN_DELAY_S": str(TOKEN_DELAY_S)},
        }
        created = create_endpoint(http, NAME, [entity])
        slow = {
            **entity,
            "environment_vars": {"MOESERVE_INSTANT_TOKEN_DELAY_S": str(SLOW_TOKEN_DELAY_S)},
        }
        create_endpoint(http, SLOW, [slow])
        workspace = http.get("/api/2.0/workspaces").json()["workspaces"][0]["workspace_id"]
        user = http.post(f"/api/2.0/workspaces/{workspace}/users", json={"user_name": "metered"})
        live.limited_token = user.json()["token_value"]  # type: ignore[attr-defined]
        grant = http.patch(
            f"/api/2.0/permissions/serving-endpoints/{created['id']}",
            json={
                "access_control_list": [{"user_name": "metered", "permission_level": "CAN_QUERY"}]
            },
        )
        assert grant.status_code == 200, grant.text
        limits = [
            {
                "calls": LIMITED_CALLS,
                "key": "user",
                "principal": "metered",
                "renewal_period": "minute",
            }
        ]
        put = http.put(
            f"/api/2.0/serving-endpoints/{NAME}/ai-gateway", json={"rate_limits": limits}
        )
        assert put.status_code == 200, put.text
        yield live


async def _plain(http: httpx.AsyncClient, marker: str) -> Seen:
    body = {
        "messages": [{"role": "user", "content": f"plain {marker}"}],
        "max_tokens": random.randint(1, 4),
        "client_request_id": marker,
    }
    response = await http.post(f"/serving-endpoints/{NAME}/invocations", json=body)
    seen = Seen("plain", response.status_code)
    if response.status_code == 200:
        usage = response.json()["usage"]
        seen.prompt_tokens, seen.completion_tokens = (
            usage["prompt_tokens"],
            usage["completion_tokens"],
        )
    return seen


async def _stream(
    http: httpx.AsyncClient, marker: str, *, abandon: bool, prompt_tokens: int
) -> Seen:
    body = {
        "messages": [{"role": "user", "content": f"stream {marker}"}],
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
        "client_request_id": marker,
    }
    seen = Seen("abandoned" if abandon else "stream", 0)
    async with http.stream(
        "POST",
        "/serving-endpoints/chat/completions",
        json={**body, "model": SLOW if abandon else NAME},
    ) as response:
        seen.status = response.status_code
        if response.status_code != 200:
            return seen
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            if chunk.get("usage"):
                seen.prompt_tokens = chunk["usage"]["prompt_tokens"]
                seen.completion_tokens = chunk["usage"]["completion_tokens"]
            elif abandon:  # one token read, then the client goes away
                seen.prompt_tokens, seen.completion_tokens = prompt_tokens, 1
                seen.status = 499
                return seen
    return seen


async def _too_long(http: httpx.AsyncClient, marker: str) -> Seen:
    too_long = [{"role": "user", "content": "hello " * 5000}]  # past the 4,096-token context
    body = {"messages": too_long, "client_request_id": marker}
    response = await http.post(f"/serving-endpoints/{NAME}/invocations", json=body)
    return Seen("too_long", response.status_code)


async def _limited(http: httpx.AsyncClient, marker: str, token: str) -> Seen:
    messages = [{"role": "user", "content": f"limited {marker}"}]
    body = {"messages": messages, "max_tokens": 1, "client_request_id": marker}
    headers = {"Authorization": f"Bearer {token}"}
    response = await http.post(f"/serving-endpoints/{NAME}/invocations", json=body, headers=headers)
    seen = Seen("limited", response.status_code)
    if response.status_code == 200:
        usage = response.json()["usage"]
        seen.prompt_tokens, seen.completion_tokens = (
            usage["prompt_tokens"],
            usage["completion_tokens"],
        )
    return seen


async def _run_mix(server: LiveServer) -> dict[str, Seen]:
    chat_template = load_tokenizer("cl100k_base").apply_chat_template
    kinds = (
        ["plain"] * 400
        + ["stream"] * 300
        + ["abandoned"] * 100
        + ["too_long"] * 100
        + ["limited"] * 100
    )
    random.Random(7).shuffle(kinds)
    seen: dict[str, Seen] = {}
    gate = asyncio.Semaphore(32)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(
        base_url=server.url, headers=headers, timeout=60, limits=limits
    ) as http:

        async def one(i: int, kind: str) -> None:
            marker = f"m{i:04d}-{kind}"
            async with gate:
                if kind == "plain":
                    seen[marker] = await _plain(http, marker)
                elif kind in ("stream", "abandoned"):
                    prompt = len(chat_template([{"role": "user", "content": f"stream {marker}"}]))
                    seen[marker] = await _stream(
                        http, marker, abandon=kind == "abandoned", prompt_tokens=prompt
                    )
                elif kind == "too_long":
                    seen[marker] = await _too_long(http, marker)
                else:
                    seen[marker] = await _limited(http, marker, server.limited_token)  # type: ignore[attr-defined]

        await asyncio.gather(*(one(i, kind) for i, kind in enumerate(kinds)))
    return seen


def test_every_accepted_request_has_exactly_one_exact_row(server: LiveServer) -> None:
    seen = asyncio.run(_run_mix(server))
    assert len(seen) == TOTAL
    statuses = Counter((s.kind, s.status) for s in seen.values())
    assert statuses[("plain", 200)] == 400
    assert statuses[("stream", 200)] == 300
    assert statuses[("abandoned", 499)] == 100
    assert statuses[("too_long", 400)] == 100
    assert statuses[("limited", 200)] == LIMITED_CALLS
    assert statuses[("limited", 429)] == 100 - LIMITED_CALLS

    accepted = {m for m, s in seen.items() if s.status != 429}

    # An abandoned stream's row is written once the server notices the client left (there
    # is no final byte to precede); every other row was committed before its response ended.
    def all_rows() -> list[dict[str, Any]] | None:
        found = usage_rows(server, NAME) + usage_rows(server, SLOW)
        return found if len(found) >= len(accepted) else None

    rows = wait_for(all_rows, timeout=15, what="the rows of the abandoned streams")
    by_marker = Counter(r["client_request_id"] for r in rows)
    assert max(by_marker.values()) == 1, "a request was recorded twice"
    assert len({r["databricks_request_id"] for r in rows}) == len(rows)
    assert set(by_marker) == accepted  # one row per accepted call, none for rejected ones
    rows_by_marker = {r["client_request_id"]: r for r in rows}
    for marker in accepted:
        row, client = rows_by_marker[marker], seen[marker]
        assert row["status_code"] == client.status, marker
        assert (row["input_token_count"], row["output_token_count"]) == (
            client.prompt_tokens,
            client.completion_tokens,
        ), marker
    assert sum(r["input_token_count"] + r["output_token_count"] for r in rows) == sum(
        s.prompt_tokens + s.completion_tokens for s in seen.values()
    )
    settled = server.plane.gateway.ledger
    assert settled.batches_committed < settled.rows_committed  # group commit batched rows
