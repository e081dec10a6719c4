"""The query API through real clients (`openai` sync and async, `databricks-sdk`, raw
HTTP) against a live control plane whose Ray Serve replicas run the instant engine.

What the clients see is compared with what the ledger stored (the engine's counts) and
with prompt token counts computed here with the same tokenizer.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.config import Config
from databricks.sdk.service.serving import ChatMessage, ChatMessageRole
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionStreamOptionsParam

from tests.control_plane.conftest import ADMIN_TOKEN, LiveServer, wait_for
from tests.control_plane.query_fixtures import (
    async_openai_client,
    create_endpoint,
    instant_ray_server,
    openai_client,
    usage_rows,
)
from workers.tokenizer import load_tokenizer

SUFFIX = uuid.uuid4().hex[:6]
NAME = f"chat-{SUFFIX}"  # task llm/v1/chat
COMPLETE = f"complete-{SUFFIX}"  # task llm/v1/completions
EMBED = f"embed-{SUFFIX}"  # task llm/v1/embeddings
SYSTEM = f"system-{SUFFIX}"  # serves Databricks' system.ai.dbrx_instruct, version 3
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is a mixture of experts?"}
]


@pytest.fixture(scope="module")
def server(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with instant_ray_server(tmp_path_factory.mktemp("query")) as live, live.client() as http:
        create_endpoint(http, NAME)
        create_endpoint(http, COMPLETE, task="llm/v1/completions")
        create_endpoint(http, EMBED, task="llm/v1/embeddings")
        create_endpoint(
            http,
            SYSTEM,
            [{"entity_name": "system.ai.dbrx_instruct", "entity_version": "3"}],
        )
        yield live


@pytest.fixture(scope="module")
def cl100k() -> Any:
    return load_tokenizer("cl100k_base")


def _row(server: LiveServer, request_id: str, endpoint: str = NAME) -> dict[str, Any]:
    rows = [r for r in usage_rows(server, endpoint) if r["databricks_request_id"] == request_id]
    assert len(rows) == 1, rows
    return rows[0]


def _request_id(response_id: str) -> str:
    return response_id.split("-", 1)[1]


def test_a_databricks_system_model_name_serves(server: LiveServer) -> None:
    """`system.ai.dbrx_instruct` version 3 (by default the built-in dbrx-tiny) answers the
    openai client under Databricks' default entity name."""
    raw = openai_client(server).chat.completions.with_raw_response.create(
        model=SYSTEM, messages=MESSAGES, max_tokens=2
    )
    assert raw.headers["served-model-name"] == "dbrx_instruct-3"
    answer = raw.parse()
    assert answer.usage is not None and answer.usage.completion_tokens == 2
    assert answer.choices[0].message.content


def test_openai_chat_usage_equals_engine_counts(server: LiveServer, cl100k: Any) -> None:
    client = openai_client(server)
    raw = client.chat.completions.with_raw_response.create(
        model=NAME, messages=MESSAGES, max_tokens=3, extra_body={"client_request_id": "c-1"}
    )
    completion = raw.parse()
    assert raw.headers["served-model-name"] == "dbrx-tiny-1"
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "length"
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == len(cl100k.apply_chat_template(MESSAGES))
    assert usage.completion_tokens == 3
    row = _row(server, _request_id(completion.id))
    assert (row["input_token_count"], row["output_token_count"]) == (usage.prompt_tokens, 3)
    assert row["status_code"] == 200 and row["client_request_id"] == "c-1"
    assert not row["request_streaming"]
    assert row["served_entity_id"] == "dbrx-tiny-1" and row["requester"] == "admin"
    assert row["workspace_id"] is not None  # the caller's workspace is billed


def test_openai_completions_and_n_choices(server: LiveServer, cl100k: Any) -> None:
    completion = openai_client(server).completions.create(
        model=COMPLETE, prompt="tiktoken is great!", max_tokens=2, n=3
    )
    assert completion.object == "text_completion"
    assert sorted(c.index for c in completion.choices) == [0, 1, 2]
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == len(cl100k.encode("tiktoken is great!"))
    assert completion.usage.completion_tokens == 6  # 2 tokens x 3 choices
    row = _row(server, _request_id(completion.id), COMPLETE)
    assert row["output_token_count"] == 6


@pytest.mark.parametrize("include_usage", [True, False])
def test_openai_streaming(server: LiveServer, include_usage: bool) -> None:
    options: ChatCompletionStreamOptionsParam | None = (
        {"include_usage": True} if include_usage else None
    )
    stream = openai_client(server).chat.completions.create(
        model=NAME, messages=MESSAGES, max_tokens=4, stream=True, stream_options=options
    )
    chunks = list(stream)
    content = [c for c in chunks if c.choices]
    assert content[0].choices[0].delta.role == "assistant"
    assert content[-1].choices[0].finish_reason == "length"
    row = _row(server, _request_id(chunks[0].id))
    assert row["request_streaming"] and row["status_code"] == 200
    assert row["output_token_count"] == 4
    if include_usage:
        last = chunks[-1]
        assert last.choices == [] and last.usage is not None
        assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (
            row["input_token_count"],
            row["output_token_count"],
        )
    else:
        assert all(c.usage is None for c in chunks)


def test_sse_wire_format_ends_with_done(server: LiveServer) -> None:
    with (
        server.client() as http,
        http.stream(
            "POST",
            f"/serving-endpoints/{COMPLETE}/invocations",
            json={"prompt": "hi", "max_tokens": 2, "stream": True},
        ) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


def test_async_client_concurrent_requests(server: LiveServer) -> None:
    async def run() -> list[Any]:
        client = async_openai_client(server)
        calls = [
            client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=2)
            for _ in range(20)
        ]
        return list(await asyncio.gather(*calls))

    results = asyncio.run(run())
    ids = {_request_id(r.id) for r in results}
    assert len(ids) == 20
    stored = {r["databricks_request_id"]: r for r in usage_rows(server, NAME)}
    for result in results:
        row = stored[_request_id(result.id)]
        assert row["output_token_count"] == result.usage.completion_tokens == 2


def test_databricks_sdk_query(server: LiveServer, cl100k: Any) -> None:
    client = WorkspaceClient(
        config=Config(host=server.url, token=ADMIN_TOKEN, retry_timeout_seconds=10)
    )
    response = client.serving_endpoints.query(
        NAME,
        messages=[ChatMessage(role=ChatMessageRole.USER, content="What is a mixture of experts?")],
        max_tokens=3,
    )
    assert response.choices and response.choices[0].message is not None
    assert response.usage is not None
    assert response.usage.prompt_tokens == len(cl100k.apply_chat_template(MESSAGES))
    assert response.usage.completion_tokens == 3
    assert response.served_model_name == "dbrx-tiny-1"


def test_embeddings_openai_and_native(server: LiveServer, cl100k: Any) -> None:
    client = openai_client(server)
    result = client.embeddings.create(model=EMBED, input=["hello world", "tiktoken is great!"])
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == len(result.data[1].embedding) > 0
    expected = len(cl100k.encode("hello world")) + len(cl100k.encode("tiktoken is great!"))
    assert result.usage.prompt_tokens == expected
    with server.client() as http:
        native = http.post(f"/serving-endpoints/{EMBED}/invocations", json={"input": "hello world"})
    assert native.status_code == 200, native.text
    assert native.json()["data"][0]["object"] == "embedding"


def test_models_list(server: LiveServer) -> None:
    names = [m.id for m in openai_client(server).models.list()]
    assert NAME in names


def test_bad_requests_are_clear(server: LiveServer) -> None:
    client = openai_client(server)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-endpoint", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model=NAME, messages=MESSAGES, temperature=7)
    with server.client() as http:
        missing = http.post("/serving-endpoints/chat/completions", json={"messages": MESSAGES})
        assert missing.status_code == 400 and "model" in missing.json()["message"]
        neither = http.post(f"/serving-endpoints/{NAME}/invocations", json={"foo": 1})
        assert neither.status_code == 400 and "messages" in neither.json()["message"]
    with pytest.raises(openai.AuthenticationError):
        openai_client(server, token="dapi-wrong").chat.completions.create(
            model=NAME, messages=MESSAGES
        )


def test_context_overflow_is_400_and_recorded(server: LiveServer) -> None:
    """max_tokens past the context: a 400 after acceptance, so it leaves one usage row."""
    marker = f"overflow-{uuid.uuid4().hex[:6]}"
    with pytest.raises(openai.BadRequestError, match="context"):
        openai_client(server).chat.completions.create(
            model=NAME,
            messages=MESSAGES,
            max_tokens=10**7,
            extra_body={"client_request_id": marker},
        )
    rows = [r for r in usage_rows(server, NAME) if r["client_request_id"] == marker]
    assert len(rows) == 1 and rows[0]["status_code"] == 400


def test_rate_limit_429_with_integer_retry_after(server: LiveServer) -> None:
    name = f"limited-{SUFFIX}"
    with server.client() as http:
        create_endpoint(http, name, task="llm/v1/completions")
        limits = {"rate_limits": [{"calls": 2, "key": "endpoint", "renewal_period": "minute"}]}
        put = http.put(f"/api/2.0/serving-endpoints/{name}/ai-gateway", json=limits)
        assert put.status_code == 200, put.text
        server.plane.gateway.targets.forget(name)
        statuses = []
        for _ in range(3):
            response = http.post(
                f"/serving-endpoints/{name}/invocations", json={"prompt": "a", "max_tokens": 1}
            )
            statuses.append(response.status_code)
        assert statuses == [200, 200, 429]
        assert response.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
        assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert len(usage_rows(server, name)) == 2  # the rejected call was never accepted
    with pytest.raises(openai.RateLimitError):
        openai_client(server).completions.create(model=name, prompt="a", max_tokens=1)


def test_prometheus_metrics(server: LiveServer) -> None:
    openai_client(server).chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=1)
    with server.client() as http:
        workspace = http.get("/api/2.0/workspaces").json()["workspaces"][0]["workspace_id"]
        endpoint_id = http.get(f"/api/2.0/serving-endpoints/{NAME}").json()["id"]
        # the labels in the exposition's (sorted) order
        series = f'endpoint="{NAME}",endpoint_id="{endpoint_id}",served_entity="dbrx-tiny-1"'
        tenant = f'workspace="{workspace}"'
        text = http.get("/metrics").text
        assert f'moeserve_requests_total{{{series},status="200",{tenant}}}' in text
        assert "moeserve_time_to_first_token_seconds_bucket" in text
        per_endpoint = http.get(f"/api/2.0/serving-endpoints/{NAME}/metrics").text
        assert "moeserve_endpoint_ready" in per_endpoint
        assert f"moeserve_output_tokens_total{{{series},{tenant}}}" in per_endpoint
        assert httpx.get(f"{server.url}/metrics").status_code == 401
    wait_for(
        lambda: "moeserve_served_entity_replicas{" in _metrics(server),
        timeout=20,
        what="replica gauge",
    )


def _metrics(server: LiveServer) -> str:
    with server.client() as http:
        return http.get("/metrics").text


def test_inference_table_keeps_each_request_and_answer_and_reads_them_back(
    server: LiveServer,
) -> None:
    """With the inference table on, the request JSON and the answer JSON (a stream's
    choices assembled, each apart) are kept with the usage row's status, latency, tokens and
    client request id; they read back a page at a time, or as JSON Lines, for the caller's
    workspace only."""
    with server.client() as http:
        tables = {"inference_table_config": {"enabled": True}}
        for endpoint in (NAME, COMPLETE):
            put = http.put(f"/api/2.0/serving-endpoints/{endpoint}/ai-gateway", json=tables)
            assert put.status_code == 200, put.text
            server.plane.gateway.targets.forget(endpoint)
    client = openai_client(server)
    answer = client.chat.completions.create(
        model=NAME,
        messages=MESSAGES,
        max_tokens=3,
        n=2,
        extra_body={"client_request_id": "inference-1"},
    )
    streamed: dict[int, str] = {}
    stream_id = ""
    for chunk in client.chat.completions.create(
        model=NAME, messages=MESSAGES, max_tokens=2, n=2, stream=True
    ):
        stream_id = chunk.id
        for choice in chunk.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + (choice.delta.content or "")
    with server.client() as http:
        plain = http.post(
            f"/serving-endpoints/{COMPLETE}/invocations", json={"prompt": "log me", "max_tokens": 2}
        ).json()
        listing = http.get(f"/api/2.0/serving-endpoints/{NAME}/inference-log")
        assert listing.status_code == 200, listing.text
        rows = {r["databricks_request_id"]: r for r in listing.json()["rows"]}
        completions = http.get(f"/api/2.0/serving-endpoints/{COMPLETE}/inference-log").json()

    whole = rows[_request_id(answer.id)]
    assert whole["request"]["messages"] == MESSAGES and whole["request"]["n"] == 2
    assert whole["response"]["id"] == answer.id
    assert [c["message"]["content"] for c in whole["response"]["choices"]] == [
        c.message.content for c in answer.choices
    ]
    assert answer.usage is not None
    assert (whole["input_token_count"], whole["output_token_count"]) == (
        answer.usage.prompt_tokens,
        answer.usage.completion_tokens,
    )
    assert whole["client_request_id"] == "inference-1" and whole["status_code"] == 200
    assert whole["execution_duration_ms"] >= 0 and not whole["response_truncated"]

    stream = rows[_request_id(stream_id)]
    assert stream["request"]["stream"] is True
    assert stream["response"]["choices"] == [
        {"index": index, "text": text} for index, text in sorted(streamed.items())
    ]
    assert len(streamed) == 2 and stream["client_request_id"] is None

    (logged,) = [
        r for r in completions["rows"] if r["databricks_request_id"] == _request_id(plain["id"])
    ]
    assert logged["request"]["prompt"] == "log me" and logged["response"] == plain

    with server.client() as http:
        # a page at a time: the same rows, each once
        paged, token = [], None
        while True:
            params: dict[str, Any] = {"page_size": 1}
            if token:
                params["page_token"] = token
            page = http.get(f"/api/2.0/serving-endpoints/{NAME}/inference-log", params=params)
            paged += page.json()["rows"]
            token = page.json().get("next_page_token")
            if not token:
                break
        assert paged == listing.json()["rows"]
        lines = http.get(
            f"/api/2.0/serving-endpoints/{NAME}/inference-log", params={"format": "jsonl"}
        )
        assert lines.headers["content-type"].startswith("application/x-ndjson")
        assert [json.loads(line) for line in lines.text.splitlines()] == paged
        # another workspace sees no such endpoint
        other = http.post("/api/2.0/workspaces", json={"name": f"outsiders-{SUFFIX}"}).json()
        outsider = http.post(
            f"/api/2.0/workspaces/{other['workspace_id']}/users",
            json={"user_name": f"admin-{SUFFIX}", "admin": True},
        ).json()["token_value"]
    with server.client(outsider) as theirs:
        assert theirs.get(f"/api/2.0/serving-endpoints/{NAME}/inference-log").status_code == 404


def test_guardrails_that_need_a_guard_model_are_refused_without_one(server: LiveServer) -> None:
    """This installation names no guard model: safety and valid_topics cannot be enforced,
    and a config asking for them is a 400 that says so."""
    with server.client() as http:
        for parameters in ({"safety": True}, {"valid_topics": ["billing"]}):
            for direction in ("input", "output"):
                put = http.put(
                    f"/api/2.0/serving-endpoints/{NAME}/ai-gateway",
                    json={"guardrails": {direction: parameters}},
                )
                assert put.status_code == 400, put.text
                assert "needs a guard model" in put.json()["message"]
                assert f"guardrails.{direction}." in put.json()["message"]
