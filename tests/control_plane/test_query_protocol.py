"""The query path's pure parts: body validation, the traffic split and fallback order,
response shapes (logprobs, usage chunk, base64 embeddings) and error classification."""

from __future__ import annotations

import base64
import struct
from collections import Counter
from typing import Any

import pytest

from control_plane.endpoints.config import EndpointConfig
from control_plane.errors import BadRequest, InvalidParameter, TemporarilyUnavailable
from control_plane.gateway.dispatch import ReplicaFailed, classify
from control_plane.gateway.protocol import ChatBody, EmbeddingsBody, kind_of, parse_body
from control_plane.gateway.routing import candidates
from control_plane.gateway.shapes import (
    chat_logprobs,
    completion_logprobs,
    embeddings_response,
    usage_chunk,
)
from tests.control_plane.domain_factories import endpoint_config, served_entity
from workers.engine.request import GenerationRequest, TokenLogprob, Usage

MESSAGES = [{"role": "user", "content": "hi"}]


def test_kind_of_native_bodies() -> None:
    assert kind_of({"messages": MESSAGES}) == "chat"
    assert kind_of({"prompt": "x"}) == "completion"
    assert kind_of({"input": "x"}) == "embeddings"
    with pytest.raises(InvalidParameter, match="messages"):
        kind_of({"foo": 1})


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"messages": MESSAGES, "temperature": 3}, "temperature"),
        ({"messages": MESSAGES, "n": 0}, "n"),
        ({"messages": MESSAGES, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": MESSAGES, "stop": [""]}, "stop"),
        ({"messages": MESSAGES, "top_logprobs": 21}, "top_logprobs"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "role"),
        ({"messages": []}, "messages"),
    ],
)
def test_bad_chat_parameters_name_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidParameter, match=field):
        parse_body("chat", raw)


def test_body_becomes_an_engine_request_the_replica_accepts() -> None:
    body = parse_body(
        "chat",
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
    assert isinstance(body, ChatBody)
    assert body.messages[0].text() == "ab" and body.include_usage
    request = GenerationRequest.model_validate(body.generation_request("r1", [1, 2]))
    assert (request.max_tokens, request.stop, request.logprobs, request.seed) == (5, ["x"], 3, 7)


def test_completion_prompt_list_and_embedding_inputs() -> None:
    assert parse_body("completion", {"prompt": ["one"]}).text() == "one"  # type: ignore[union-attr]
    with pytest.raises(InvalidParameter, match="one prompt"):
        parse_body("completion", {"prompt": ["a", "b"]})
    texts = parse_body("embeddings", {"input": ["a", "b"]})
    ids = parse_body("embeddings", {"input": [1, 2, 3]})
    nested = parse_body("embeddings", {"input": [[1], [2, 3]]})
    assert isinstance(texts, EmbeddingsBody) and texts.items() == ["a", "b"]
    assert isinstance(ids, EmbeddingsBody) and ids.items() == [[1, 2, 3]]
    assert isinstance(nested, EmbeddingsBody) and nested.items() == [[1], [2, 3]]
    with pytest.raises(InvalidParameter, match="input"):
        parse_body("embeddings", {"input": []})


def _config(*routes: tuple[str, int]) -> EndpointConfig:
    entities = [served_entity(name) for name, _ in routes]
    return endpoint_config(*entities, weights=dict(routes))


def test_traffic_split_and_fallback_order() -> None:
    config = _config(("a", 75), ("b", 25), ("spare", 0))
    firsts = Counter(candidates(config, "e", fallback=False)[0].name for _ in range(4000))
    assert set(firsts) == {"a", "b"} and 2800 < firsts["a"] < 3200
    assert [e.name for e in candidates(_config(("a", 100), ("spare", 0)), "e", fallback=True)] == [
        "a",
        "spare",
    ]
    assert len(candidates(config, "e", fallback=False)) == 1
    assert len(candidates(config, "e", fallback=True)) == 2  # one retry, never more
    with pytest.raises(TemporarilyUnavailable, match="not ready"):
        candidates(None, "e", fallback=False)


def test_logprob_shapes() -> None:
    items = [TokenLogprob(5, -0.5, [(5, -0.5), (6, -1.5)]), TokenLogprob(7, -0.1, [(7, -0.1)])]
    text_of = {5: "a", 6: "b", 7: "cd"}.__getitem__
    chat = chat_logprobs(items, text_of)
    assert chat["content"][0] == {
        "token": "a",
        "logprob": -0.5,
        "bytes": [97],
        "top_logprobs": [
            {"token": "a", "logprob": -0.5, "bytes": [97]},
            {"token": "b", "logprob": -1.5, "bytes": [98]},
        ],
    }
    legacy = completion_logprobs(items, text_of, 0)
    assert legacy["tokens"] == ["a", "cd"] and legacy["text_offset"] == [0, 1]
    assert legacy["top_logprobs"][0] == {"a": -0.5, "b": -1.5}


def test_usage_chunk_and_base64_embeddings() -> None:
    chunk = usage_chunk("chat", "r", "m", Usage(3, 4))
    assert chunk["choices"] == [] and chunk["usage"]["total_tokens"] == 7
    encoded = embeddings_response("m", [[0.5, -0.25]], 2, "base64")["data"][0]["embedding"]
    assert list(struct.unpack("<2f", base64.b64decode(encoded))) == [0.5, -0.25]


def test_replica_errors_are_client_or_retryable() -> None:
    entity = served_entity("e")
    client = classify(ValueError("max_tokens 9 + prompt 3 tokens exceed the context of 8"), entity)
    assert isinstance(client, BadRequest) and "max_tokens" in client.message
    assert isinstance(classify(RuntimeError("engine died"), entity), ReplicaFailed)
    assert isinstance(classify(TimeoutError(), entity), ReplicaFailed)
