"""Every text field of a query body is the caller's input and may end up in a database
row: NUL and lone surrogates are refused at the edge (a 400 naming the field, never the
value), and the extras kept in usage rows (`client_request_id`, `usage_context`) have the
limits docs/api.md states."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import JsonValue

from control_plane.errors import InvalidParameter
from control_plane.query.requests import ChatRequest, QueryKind, parse_request

CHAT, COMPLETIONS, EMBEDDINGS = QueryKind.CHAT, QueryKind.COMPLETIONS, QueryKind.EMBEDDINGS
# The limits docs/api.md states (characters; keys per usage_context).
MAX_CLIENT_REQUEST_ID = 256
MAX_STOP_LENGTH = 256
MAX_USAGE_CONTEXT_KEYS = 10
MAX_USAGE_CONTEXT_KEY = 64
MAX_USAGE_CONTEXT_VALUE = 256
NUL, SURROGATE = "\x00", "\ud800"  # what json.loads makes of "\u0000" and "\ud800"


def _chat(**fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "hi"}], **fields}


def _bodies(bad: str) -> list[tuple[QueryKind, dict[str, JsonValue], str]]:
    """(kind, body, the field the 400 must name) for each text field holding `bad`."""
    return [
        (CHAT, {"messages": [{"role": "user", "content": f"a{bad}b"}]}, "messages.0.content"),
        (
            CHAT,
            {"messages": [{"role": "user", "content": [{"type": "text", "text": bad}]}]},
            "messages.0.content.0.text",
        ),
        (CHAT, _chat(model=f"chat{bad}"), "model"),
        (CHAT, _chat(client_request_id=f"id-{bad}"), "client_request_id"),
        (CHAT, _chat(usage_context={"team": f"search{bad}"}), "usage_context.team"),
        (CHAT, _chat(usage_context={f"te{bad}am": "search"}), "usage_context has a key"),
        (CHAT, _chat(stop=f"END{bad}"), "stop"),
        (CHAT, _chat(stop=["END", f"{bad}"]), "stop.1"),
        (CHAT, _chat(**{f"x{bad}": 1}), "the body has a key"),
        (COMPLETIONS, {"prompt": f"once{bad}"}, "prompt"),
        (COMPLETIONS, {"prompt": [bad]}, "prompt.0"),
        (COMPLETIONS, {"prompt": "x", "client_request_id": bad}, "client_request_id"),
        (EMBEDDINGS, {"input": f"{bad}"}, "input"),
        (EMBEDDINGS, {"input": ["fine", f"x{bad}"]}, "input.1"),
        (EMBEDDINGS, {"input": "x", "usage_context": {"k": bad}}, "usage_context.k"),
    ]


@pytest.mark.parametrize(
    ("kind", "raw", "field", "fix"),
    [(*case, "remove it") for case in _bodies(NUL)]
    + [(*case, "send valid Unicode") for case in _bodies(SURROGATE)],
)
def test_nul_and_lone_surrogates_are_refused_in_every_text_field(
    kind: QueryKind, raw: dict[str, Any], field: str, fix: str
) -> None:
    with pytest.raises(InvalidParameter) as refused:
        parse_request(kind, raw)
    message = refused.value.message
    assert field in message and fix in message, message
    assert NUL not in message and SURROGATE not in message  # never the value itself
    assert refused.value.status_code == 400


def test_the_json_escapes_that_make_them_are_refused_too() -> None:
    body = json.loads('{"prompt": "x", "client_request_id": "a\\u0000b", "usage_context": {}}')
    with pytest.raises(InvalidParameter, match="client_request_id holds a NUL"):
        parse_request(COMPLETIONS, body)
    body = json.loads('{"prompt": "x", "usage_context": {"k": "\\udc00"}}')
    with pytest.raises(InvalidParameter, match=r"usage_context\.k holds a lone surrogate"):
        parse_request(COMPLETIONS, body)
    # A surrogate pair is one character (an emoji), not a lone surrogate.
    paired = json.loads('{"prompt": "\\ud83d\\ude00", "usage_context": {"k": "\\ud83d\\ude00"}}')
    parsed = parse_request(COMPLETIONS, paired)
    assert parsed.usage_context == {"k": "\U0001f600"}


def test_usage_context_limits() -> None:
    most = {f"k{i}": "v" for i in range(MAX_USAGE_CONTEXT_KEYS)}
    assert parse_request(CHAT, _chat(usage_context=most)).usage_context == most
    longest = {"k" * MAX_USAGE_CONTEXT_KEY: "v" * MAX_USAGE_CONTEXT_VALUE}
    assert parse_request(CHAT, _chat(usage_context=longest)).usage_context == longest
    assert parse_request(CHAT, _chat(usage_context={"k": ""})).usage_context == {"k": ""}
    refused: list[tuple[JsonValue, str]] = [
        ({**most, "one-more": "v"}, f"at most {MAX_USAGE_CONTEXT_KEYS} items"),
        ({"k" * (MAX_USAGE_CONTEXT_KEY + 1): "v"}, "usage_context key: String should have at most"),
        ({"": "v"}, "usage_context key: String should have at least 1"),
        ({"k": "v" * (MAX_USAGE_CONTEXT_VALUE + 1)}, "usage_context.k: String should have at most"),
        ({"k": 1}, "usage_context.k: Input should be a valid string"),
        ({"k": {"nested": "v"}}, "usage_context.k: Input should be a valid string"),
        ({"k": None}, "usage_context.k: Input should be a valid string"),
        (["k", "v"], "usage_context: Input should be a valid dictionary"),
    ]
    for context, expected in refused:
        with pytest.raises(InvalidParameter) as error:
            parse_request(CHAT, _chat(usage_context=context))
        assert expected in error.value.message, (context, error.value.message)


def test_client_request_id_and_stop_limits() -> None:
    longest = "c" * MAX_CLIENT_REQUEST_ID
    assert parse_request(CHAT, _chat(client_request_id=longest)).client_request_id == longest
    with pytest.raises(InvalidParameter, match="client_request_id: String should have at most"):
        parse_request(CHAT, _chat(client_request_id=longest + "c"))
    # An empty id would make the usage row unstorable after the query ran: refused up front.
    with pytest.raises(InvalidParameter, match="client_request_id: String should have at least"):
        parse_request(CHAT, _chat(client_request_id=""))
    longest_stop = parse_request(CHAT, _chat(stop="s" * MAX_STOP_LENGTH))
    assert isinstance(longest_stop, ChatRequest) and longest_stop.stops() == ["s" * 256]
    with pytest.raises(InvalidParameter, match="stop"):
        parse_request(CHAT, _chat(stop=["s" * (MAX_STOP_LENGTH + 1)]))


def test_a_400_never_repeats_a_name_the_caller_chose_unless_it_is_short_and_plain() -> None:
    long_name = "p" * 200
    with pytest.raises(InvalidParameter) as unknown:
        parse_request(CHAT, _chat(**{long_name: 1}))
    assert long_name not in unknown.value.message and "unknown parameter" in unknown.value.message
    with pytest.raises(InvalidParameter) as markup:
        parse_request(CHAT, _chat(usage_context={"<img src=x>": 5}))
    assert "<img" not in markup.value.message
    assert "usage_context.<key>: Input should be a valid string" in markup.value.message
    with pytest.raises(InvalidParameter, match=r"unknown parameter 'messages.0.name'"):
        parse_request(CHAT, {"messages": [{"role": "user", "content": "x", "name": "ana"}]})
