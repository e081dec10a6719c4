"""The query path's pure parts: request validation (OpenAI's types and ranges, strictly;
unimplemented parameters refused by name), the traffic split and fallback order, response
shapes (logprobs, usage chunk, base64 embeddings, stream nulls) and error classification."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import threading
from collections import Counter
from typing import Any

import pytest
from pydantic import JsonValue

from control_plane.endpoints.config import EndpointConfig
from control_plane.errors import BadRequest, InvalidParameter, NotFound, TemporarilyUnavailable
from control_plane.query import responses
from control_plane.query.replicas import ReplicaFailed, classify
from control_plane.query.requests import (
    UNSUPPORTED,
    ChatRequest,
    CompletionRequest,
    EmbeddingsRequest,
    QueryKind,
    parse_request,
)
from control_plane.query.targets import QueryTarget, QueryTargets
from control_plane.query.traffic import candidates
from tests.control_plane.domain_factories import endpoint_config, query_target, served_entity
from workers.engine.request import Completion, TokenChunk, TokenLogprob, Usage

MESSAGES: JsonValue = [{"role": "user", "content": "hi"}]
CHAT, COMPLETIONS, EMBEDDINGS = QueryKind.CHAT, QueryKind.COMPLETIONS, QueryKind.EMBEDDINGS


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"messages": MESSAGES, "temperature": 3}, "temperature"),
        ({"messages": MESSAGES, "n": 0}, "n"),
        ({"messages": MESSAGES, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": MESSAGES, "stop": [""]}, "stop"),
        ({"messages": MESSAGES, "top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"messages": MESSAGES, "top_logprobs": 2}, "top_logprobs"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "role"),
        ({"messages": [{"role": "user", "content": "x", "name": "ana"}]}, "name"),
        ({"messages": []}, "messages"),
        ({"messages": MESSAGES, "max_tokens": "5"}, "max_tokens"),
        ({"messages": MESSAGES, "max_completion_tokens": 0}, "max_completion_tokens"),
        ({"messages": MESSAGES, "stream": "yes"}, "stream"),
        ({"messages": MESSAGES, "stream_options": {"include_usage": True}}, "stream_options"),
        ({"messages": MESSAGES, "temperature": "0.5"}, "temperature"),
        ({"messages": MESSAGES, "presence_penalty": 5}, "presence_penalty"),
        ({"messages": MESSAGES, "frequency_penalty": 0.5}, "frequency_penalty"),
        ({"messages": MESSAGES, "wat": 1}, "wat"),
    ],
)
def test_bad_chat_parameters_name_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidParameter, match=field):
        parse_request(CHAT, raw)


@pytest.mark.parametrize("kind", list(QueryKind))
def test_every_unimplemented_parameter_is_refused_by_name_unless_it_is_a_no_op(
    kind: QueryKind,
) -> None:
    base: dict[QueryKind, dict[str, Any]] = {
        CHAT: {"messages": MESSAGES},
        COMPLETIONS: {"prompt": "x"},
        EMBEDDINGS: {"input": "x"},
    }
    for name, (no_ops, _) in UNSUPPORTED[kind].items():
        with pytest.raises(InvalidParameter, match=name):
            parse_request(kind, {**base[kind], name: {"something": "else"}})
        for value in no_ops:
            parse_request(kind, {**base[kind], name: value})  # the default: honoured as is
    assert "functions" in UNSUPPORTED[CHAT] and "tools" not in UNSUPPORTED[CHAT]
    assert {"best_of", "echo", "suffix"} <= set(UNSUPPORTED[COMPLETIONS])
    assert "dimensions" in UNSUPPORTED[EMBEDDINGS]


def test_booleans_are_not_numbers_and_penalties_keep_openai_ranges() -> None:
    with pytest.raises(InvalidParameter, match="echo"):
        parse_request(COMPLETIONS, {"prompt": "x", "echo": 0})
    with pytest.raises(InvalidParameter, match="between -2 and 2"):
        parse_request(CHAT, {"messages": MESSAGES, "presence_penalty": -2.5})
    parse_request(CHAT, {"messages": MESSAGES, "presence_penalty": 0.0, "frequency_penalty": 0})


def test_max_completion_tokens_is_honoured_and_the_smaller_limit_wins() -> None:
    def limit(**fields: Any) -> int | None:
        body = parse_request(CHAT, {"messages": MESSAGES, **fields})
        assert isinstance(body, ChatRequest)
        return body.generation_request("r", [1]).max_tokens

    assert limit() is None
    assert limit(max_completion_tokens=7) == 7
    assert limit(max_tokens=5, max_completion_tokens=9) == 5
    assert limit(max_tokens=9, max_completion_tokens=5) == 5


def test_body_becomes_the_engine_request() -> None:
    body = parse_request(
        CHAT,
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                }
            ],
            "max_tokens": 5,
            "stop": "x",
            "logprobs": True,
            "top_logprobs": 3,
            "seed": 7,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert isinstance(body, ChatRequest)
    assert body.messages[0].text() == "ab" and body.include_usage
    request = body.generation_request("r1", [1, 2])
    assert (request.max_tokens, request.stop, request.logprobs, request.seed) == (5, ["x"], 3, 7)


def test_completion_prompt_list_and_embedding_inputs() -> None:
    one = parse_request(COMPLETIONS, {"prompt": ["one"]})
    assert isinstance(one, CompletionRequest) and one.text() == "one"
    with pytest.raises(InvalidParameter, match="one prompt"):
        parse_request(COMPLETIONS, {"prompt": ["a", "b"]})
    texts = parse_request(EMBEDDINGS, {"input": ["a", "b"]})
    ids = parse_request(EMBEDDINGS, {"input": [1, 2, 3]})
    nested = parse_request(EMBEDDINGS, {"input": [[1], [2, 3]]})
    assert isinstance(texts, EmbeddingsRequest) and texts.items() == ["a", "b"]
    assert isinstance(ids, EmbeddingsRequest) and ids.items() == [[1, 2, 3]]
    assert isinstance(nested, EmbeddingsRequest) and nested.items() == [[1], [2, 3]]
    with pytest.raises(InvalidParameter, match="input"):
        parse_request(EMBEDDINGS, {"input": []})


def _config(*routes: tuple[str, int]) -> EndpointConfig:
    entities = [served_entity(name) for name, _ in routes]
    return endpoint_config(*entities, weights=dict(routes))


def test_traffic_split_and_fallback_order() -> None:
    config = _config(("a", 75), ("b", 25), ("spare", 0))
    firsts = Counter(candidates(query_target(config))[0].name for _ in range(4000))
    assert set(firsts) == {"a", "b"} and 2800 < firsts["a"] < 3200
    spare = query_target(_config(("a", 100), ("spare", 0)), fallback=True)
    assert [e.name for e in candidates(spare)] == ["a", "spare"]
    assert len(candidates(query_target(config))) == 1
    assert len(candidates(query_target(config, fallback=True))) == 2  # one retry, never more
    with pytest.raises(TemporarilyUnavailable, match="not ready"):
        candidates(query_target(None))


def _dump(model: Any) -> Any:
    return json.loads(model.model_dump_json())


def test_logprob_shapes() -> None:
    items = [TokenLogprob(5, -0.5, [(5, -0.5), (6, -1.5)]), TokenLogprob(7, -0.1, [(7, -0.1)])]
    text_of = {5: "a", 6: "b", 7: "cd"}.__getitem__
    result = Completion("r", {0: "acd"}, {0: [5, 7]}, {0: "stop"}, Usage(2, 2), {0: items})
    chat = _dump(responses.chat_completion("r", "m", result, text_of))
    assert chat["choices"][0]["logprobs"]["content"][0] == {
        "token": "a",
        "logprob": -0.5,
        "bytes": [97],
        "top_logprobs": [
            {"token": "a", "logprob": -0.5, "bytes": [97]},
            {"token": "b", "logprob": -1.5, "bytes": [98]},
        ],
    }
    legacy = _dump(responses.text_completion("r", "m", result, text_of))["choices"][0]["logprobs"]
    assert legacy["tokens"] == ["a", "cd"] and legacy["text_offset"] == [0, 1]
    assert legacy["top_logprobs"][0] == {"a": -0.5, "b": -1.5}


def test_stream_chunks_send_nulls_as_openai_does_and_omit_what_it_omits() -> None:
    chunk = TokenChunk("r", 0, [5], "a", Usage(3, 1))
    first = _dump(responses.chat_chunk("r", "m", chunk, str, first=True))
    later = _dump(responses.chat_chunk("r", "m", chunk, str, first=False))
    assert first["object"] == "chat.completion.chunk" and "usage" not in first
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "a"}
    assert later["choices"][0]["delta"] == {"content": "a"}
    assert later["choices"][0]["finish_reason"] is None  # present, null
    last = _dump(responses.usage_chunk(True, "r", "m", Usage(3, 4)))
    assert last["choices"] == [] and last["usage"]["total_tokens"] == 7


def test_base64_embeddings() -> None:
    shaped = _dump(responses.embedding_list("m", [[0.5, -0.25]], 2, "base64"))
    encoded = shaped["data"][0]["embedding"]
    assert list(struct.unpack("<2f", base64.b64decode(encoded))) == [0.5, -0.25]


def test_replica_errors_are_client_or_retryable() -> None:
    entity = served_entity("e")
    client = classify(ValueError("max_tokens 9 + prompt 3 tokens exceed the context of 8"), entity)
    assert isinstance(client, BadRequest) and "max_tokens" in client.message
    assert isinstance(classify(RuntimeError("engine died"), entity), ReplicaFailed)
    assert isinstance(classify(TimeoutError(), entity), ReplicaFailed)


class CountingTargets(QueryTargets):
    """`QueryTargets` whose database read is counted and held until `release` is set."""

    def __init__(self, failing: bool = False) -> None:
        super().__init__(sessions=None, ttl_s=60)  # type: ignore[arg-type]
        self.reads = 0
        self.failing = failing
        self.release = threading.Event()

    def _load(self, authorization: str | None, name: str) -> QueryTarget:
        self.reads += 1
        self.release.wait(5)
        if self.failing:
            raise NotFound(f"no endpoint {name}")
        return query_target(None)


def test_concurrent_misses_share_one_read_and_cancelling_one_caller_spares_the_rest() -> None:
    async def scenario() -> None:
        targets = CountingTargets()
        callers = [asyncio.create_task(targets.resolve("Bearer t", "chat")) for _ in range(20)]
        await asyncio.sleep(0.05)
        callers[0].cancel()
        targets.release.set()
        results = await asyncio.gather(*callers[1:])
        assert targets.reads == 1
        assert all(result is results[0] for result in results)
        assert await targets.resolve("Bearer t", "chat") is results[0]  # cached
        assert targets.reads == 1
        await targets.resolve("Bearer other", "chat")  # another token is another key
        assert targets.reads == 2

    asyncio.run(scenario())


def test_a_read_begun_before_forget_is_not_cached_and_failures_never_are() -> None:
    async def scenario() -> None:
        targets = CountingTargets()
        first = asyncio.create_task(targets.resolve("Bearer t", "chat"))
        await asyncio.sleep(0.05)
        targets.forget("chat")  # e.g. the endpoint's config changed meanwhile
        targets.release.set()
        await first
        await targets.resolve("Bearer t", "chat")
        assert targets.reads == 2

        failing = CountingTargets(failing=True)
        failing.release.set()
        for _ in range(2):
            with pytest.raises(NotFound):
                await asyncio.gather(*(failing.resolve("Bearer t", "gone") for _ in range(5)))
        assert failing.reads == 2

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "path",
    [
        "/serving-endpoints/chat/completions",
        "/serving-endpoints/completions",
        "/serving-endpoints/embeddings",
        "/serving-endpoints/my-chat/invocations",
        "/serving-endpoints/chat/invocations",
        "/serving-endpoints/a b/invocations",
        "/serving-endpoints//invocations",
        "/serving-endpoints/a/b/invocations",
        "/serving-endpoints/a/invocations/",
        "/serving-endpoints/models",
        "/serving-endpoints/chat/completions/",
        "/serving-endpointsx/a/invocations",
        "/api/2.0/serving-endpoints/a/invocations",
        "/serving-endpoints",
    ],
)
def test_the_query_door_takes_exactly_the_declared_post_query_routes(path: str) -> None:
    """`QueryDoor` answers a POST before FastAPI routes it: it must take the paths the
    declared query routes match, with the same endpoint name, and leave every other path
    to FastAPI (where it gets the same 404/405 as before)."""
    from starlette.routing import Match

    from control_plane.query import routes

    scope = {"type": "http", "method": "POST", "path": path, "root_path": ""}
    declared = [
        (route, child)
        for route in routes.router.routes
        if (child := route.matches(scope))[0] == Match.FULL
    ]
    kind, name = routes._query_route(path)
    if not declared:
        assert (kind, name) == (None, None)
        return
    route, (_, child_scope) = declared[0]
    assert (kind is not None) != (name is not None)
    assert name == child_scope["path_params"].get("name")
    endpoint = route.endpoint  # type: ignore[attr-defined]
    assert endpoint is (routes.invocations if name else _route_of_kind(routes, kind))


def _route_of_kind(routes: Any, kind: QueryKind | None) -> Any:
    assert kind is not None
    return {
        QueryKind.CHAT: routes.chat_completions,
        QueryKind.COMPLETIONS: routes.completions,
        QueryKind.EMBEDDINGS: routes.embeddings,
    }[kind]
