"""Structured output and tool calling at the edge, without a replica: what a chat body may
ask and the 400s that say what to change, the grammar each setting compiles to, and how a
choice's text is read back as OpenAI's `tool_calls`, streamed or whole."""

from __future__ import annotations

import json
from typing import Any

import llguidance
import pytest

from control_plane.errors import InvalidParameter
from control_plane.query.call_stream import CallStream
from control_plane.query.requests import ChatRequest, QueryKind, parse_request
from control_plane.query.tool_calling import parse_calls
from workers.engine.constraint import ConstraintKind

MESSAGES: list[Any] = [{"role": "user", "content": "weather?"}]
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "the weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME: dict[str, Any] = {"type": "function", "function": {"name": "get_time"}}


def chat(**fields: Any) -> ChatRequest:
    body = parse_request(QueryKind.CHAT, {"messages": MESSAGES, **fields})
    assert isinstance(body, ChatRequest)
    return body


def refused(**fields: Any) -> str:
    with pytest.raises(InvalidParameter) as caught:
        chat(**fields)
    return str(caught.value)


def test_settings_that_cannot_work_are_400s_that_say_what_to_change() -> None:
    assert "needs at least one tool" in refused(tool_choice="required")
    named = {"type": "function", "function": {"name": "get_time"}}
    assert "not in tools" in refused(tools=[WEATHER], tool_choice=named)
    assert "same function name" in refused(tools=[WEATHER, WEATHER])
    assert "only allowed with tools" in refused(parallel_tool_calls=False)
    assert "logprobs are not supported with tools" in refused(tools=[WEATHER], logprobs=True)
    assert "functions" in refused(functions=[{"name": "f"}])
    assert "tool_choice" in refused(tools=[WEATHER], tool_choice="sometimes")
    assert "name" in refused(tools=[{"type": "function", "function": {"name": "a b"}}])


def test_a_function_named_like_a_mode_is_still_the_one_named() -> None:
    auto = {"type": "function", "function": {"name": "auto"}}
    named = {"type": "function", "function": {"name": "auto"}}
    use = chat(
        tools=[WEATHER, auto], tool_choice={"type": "function", "function": named["function"]}
    )
    source = (use.constraint() or pytest.fail()).source
    assert "get_weather" not in source and "calls: call\n" in source


def test_a_schema_too_large_to_compile_is_a_400() -> None:
    huge = {"type": "object", "description": "x" * 300_000}
    fmt = {"type": "json_schema", "json_schema": {"name": "big", "schema": huge}}
    assert "more than 262144 characters" in refused(response_format=fmt)


def test_a_schema_the_library_cannot_compile_is_a_400_with_its_reason() -> None:
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}
    message = refused(response_format=bad)
    assert "response_format.json_schema.schema cannot be compiled" in message
    assert "strin" in message
    broken_ref = {**WEATHER["function"], "parameters": {"$ref": "#/nowhere"}}
    message = refused(tools=[{"type": "function", "function": broken_ref}])
    assert "tools[0].function.parameters cannot be compiled" in message
    assert "nowhere" in message


def test_each_setting_compiles_to_the_grammar_it_promises() -> None:
    assert chat().constraint() is None
    assert chat(response_format={"type": "text"}).constraint() is None
    as_json = chat(response_format={"type": "json_object"}).constraint()
    assert as_json is not None and as_json.kind is ConstraintKind.JSON_SCHEMA
    assert chat(tools=[WEATHER]).constraint() is None  # auto: free, read back afterwards
    assert chat(tools=[WEATHER], tool_choice="none").tool_use().prompt_tools() is None

    required = chat(tools=[WEATHER, TIME], tool_choice="required").constraint()
    assert required is not None and required.kind is ConstraintKind.LARK
    assert "calls: call+" in required.source and "get_time" in required.source
    one = chat(tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False)
    assert "calls: call\n" in (one.constraint() or pytest.fail()).source
    named = chat(
        tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}}
    ).constraint()
    assert named is not None and "get_weather" not in named.source
    either = chat(tools=[WEATHER], response_format={"type": "json_object"}).constraint()
    assert either is not None and either.source.startswith("start: calls | %json")


def _walk(source: str, text: str) -> bool:
    """Whether `text` is a whole sentence of the constraint's grammar."""
    matcher = llguidance.LLMatcher(
        llguidance.LLTokenizer("byte"), llguidance.LLMatcher.grammar_from_lark(source)
    )
    tokens = list(text.encode())
    return matcher.consume_tokens(tokens) and matcher.is_accepting()


def test_the_required_grammar_admits_valid_calls_only() -> None:
    constraint = chat(tools=[WEATHER, TIME], tool_choice="required").constraint()
    assert constraint is not None
    ok = '<tool_call>{"name":"get_weather","arguments":{"city":"Oslo","days":2}}</tool_call>'
    also = '<tool_call>{"name":"get_time","arguments":{}}</tool_call>'
    assert _walk(constraint.source, ok) and _walk(constraint.source, ok + also)
    assert not _walk(constraint.source, ok.replace('"Oslo"', "3"))  # city must be a string
    assert not _walk(constraint.source, ok.replace("get_weather", "get_wether"))
    assert not _walk(constraint.source, "Sure! " + ok)


def test_a_whole_answer_and_its_stream_read_the_same_calls() -> None:
    use = chat(tools=[WEATHER, TIME], tool_choice="required").tool_use()
    text = (
        '<tool_call>{"name":"get_weather","arguments":{"city":"Oslo"}}</tool_call>'
        '<tool_call>{"name":"get_time","arguments":{}}</tool_call>'
    )
    whole = CallStream(use).feed(text, "stop")
    assert whole.finish_reason == "tool_calls" and whole.content is None
    assert [(s.index, s.call.name, json.loads(s.call.arguments)) for s in whole.calls] == [
        (0, "get_weather", {"city": "Oslo"}),
        (1, "get_time", {}),
    ]
    stream, pieces = CallStream(use), []
    for i in range(0, len(text), 7):  # seven characters a chunk: blocks split anywhere
        pieces.append(stream.feed(text[i : i + 7], None))
    pieces.append(stream.feed("", "stop"))
    assert all(p.content is None for p in pieces)  # no markup ever reaches the client
    sent = [s for p in pieces for s in p.calls]
    assert [(s.index, s.call) for s in sent] == [(s.index, s.call) for s in whole.calls]
    first_close = text.index("</tool_call>") + len("</tool_call>")
    assert pieces[(first_close - 1) // 7].calls, "a call is sent as soon as its block closes"
    assert pieces[-1].finish_reason == "tool_calls"


def test_auto_sends_text_as_soon_as_it_cannot_be_a_call_and_holds_it_while_it_can() -> None:
    use = chat(tools=[WEATHER]).tool_use()
    stream = CallStream(use)
    assert stream.feed(" ", None).content is None  # could still be a call
    assert stream.feed("<tool", None).content is None
    assert stream.feed("box> hi", None).content == " <toolbox> hi"
    assert stream.feed(" there", "stop").content == " there"
    assert CallStream(use).feed("Hello", "stop").finish_reason == "stop"


def test_a_forced_answer_cut_short_is_sent_as_content_with_length() -> None:
    use = chat(tools=[WEATHER], tool_choice="required").tool_use()
    cut = '<tool_call>{"name":"get_weather","argu'
    piece = CallStream(use).feed(cut, "length")
    assert piece.content == cut and piece.finish_reason == "length" and not piece.calls


def test_only_blocks_of_declared_functions_with_object_arguments_are_calls() -> None:
    names = {"get_weather"}
    block = '<tool_call>{"name":"get_weather","arguments":{"city":"Oslo"}}</tool_call>'
    assert parse_calls(f"  {block}\n{block} ", names) is not None
    assert parse_calls(block.replace("get_weather", "rm_rf"), names) is None
    assert parse_calls(block.replace('{"city":"Oslo"}', '"Oslo"'), names) is None
    assert parse_calls(block + " and more", names) is None
    assert parse_calls(block[:-3], names) is None


def test_conversation_turns_with_calls_and_results_are_accepted_and_checked() -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": "{}"},
    }
    body = chat(
        messages=[
            *MESSAGES,
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
        tools=[WEATHER],
    )
    turns = [m.for_template() for m in body.messages]
    assert turns[1]["tool_calls"][0]["function"]["arguments"] == {}
    assert turns[2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
    assert "tool_call_id" in refused(messages=[{"role": "tool", "content": "x"}])
    assert "content is required" in refused(messages=[{"role": "assistant"}])
    assert "only a message of role 'assistant'" in refused(
        messages=[{"role": "user", "content": "x", "tool_calls": [call]}]
    )
