"""Structured output, tool calling and guardrails end to end: the real `openai` client, the
control plane, a Ray Serve replica running the real engine on a random-weight one-layer DBRX
(cl100k).

The weights are random, so nothing but the grammar makes the output valid: every answer
validating is the proof that the sampler is constrained. Streams are read with the SDK's
own accumulator (`client.chat.completions.stream`) and must equal the whole answer of the
same seeded request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletionMessageFunctionToolCall

from control_plane.query.guard_model import Question
from control_plane.settings import GatewaySettings, SharedEndpoint, WorkerDefaults
from tests.control_plane.conftest import LiveServer, live_server, make_settings, wait_for
from tests.control_plane.query_fixtures import (
    async_openai_client,
    create_endpoint,
    openai_client,
    usage_rows,
)
from tests.control_plane.test_sdk_and_mlflow import small_dbrx_checkpoint
from workers.engine.config import EngineConfig
from workers.tokenizer import load_tokenizer

NAME = f"structured-{uuid.uuid4().hex[:6]}"
GUARD = "databricks-guard"  # the shared endpoint whose model judges safety and topics
MODEL = "tiny-structured"
MESSAGES: list[Any] = [{"role": "user", "content": "Describe a customer as JSON."}]
PERSON: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tier": {"enum": ["free", "pro", "enterprise"]},
        "active": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
    },
    "required": ["name", "age", "tier", "active", "tags"],
    "additionalProperties": False,
}
FORMAT: Any = {
    "type": "json_schema",
    "json_schema": {"name": "person", "schema": PERSON, "strict": True},
}
WEATHER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 16},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The forecast for a city",
            "parameters": WEATHER_PARAMETERS,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"enum": ["UTC", "CET", "PST"]}},
                "required": ["zone"],
                "additionalProperties": False,
            },
        },
    },
]
PARAMETERS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}


@pytest.fixture(scope="module")
def server(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("structured")
    settings = make_settings(
        f"sqlite:///{root / 'moeserve.db'}",
        root,
        workers=WorkerDefaults(engine=EngineConfig(kv_cache_tokens=8192)),
        shared_endpoints=[SharedEndpoint(name=GUARD, entity_name="dbrx-tiny")],
        gateway=GatewaySettings(lookup_cache_ttl_s=0.5, guard_model_endpoint=GUARD),
    )
    with live_server(settings) as live, live.client() as http:
        source = small_dbrx_checkpoint(root / "models" / "structured", seed=7)
        registered = http.post(
            "/api/2.0/models", json={"name": MODEL, "version": "1", "source": str(source)}
        )
        assert registered.status_code == 200, registered.text
        create_endpoint(
            http,
            NAME,
            [{"entity_name": MODEL, "entity_version": "1", "scale_to_zero_enabled": False}],
        )
        try:
            yield live
        finally:
            http.delete(f"/api/2.0/serving-endpoints/{NAME}")
            wait_for(
                lambda: http.get(f"/api/2.0/serving-endpoints/{NAME}").status_code == 404,
                30,
                "the endpoint to be deleted",
            )


def test_fifty_seeded_json_schema_answers_all_validate(server: LiveServer) -> None:
    client = async_openai_client(server)

    async def one(seed: int) -> Any:
        return await client.chat.completions.create(
            model=NAME,
            messages=MESSAGES,
            response_format=FORMAT,
            temperature=1.0,
            seed=seed,
            max_tokens=256,
        )

    async def all_of_them() -> list[Any]:
        limit = asyncio.Semaphore(16)  # sixteen at a time: constrained rows share batches

        async def bounded(seed: int) -> Any:
            async with limit:
                return await one(seed)

        return await asyncio.gather(*(bounded(seed) for seed in range(50)))

    answers = asyncio.run(all_of_them())
    contents = []
    for answer in answers:
        choice = answer.choices[0]
        assert choice.finish_reason == "stop", choice
        content = json.loads(choice.message.content)
        jsonschema.validate(content, PERSON)
        contents.append(json.dumps(content, sort_keys=True))
    assert len(set(contents)) > 10, "seeds pick different answers: the model is sampled"


def test_json_object_is_a_json_object_and_a_bad_schema_is_a_400(server: LiveServer) -> None:
    client = openai_client(server)
    answer = client.chat.completions.create(
        model=NAME,
        messages=MESSAGES,
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=128,
    )
    if answer.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)
    else:  # a free object may run past max_tokens; what came is a JSON object's start
        assert (answer.choices[0].message.content or "").startswith("{")
    bad: Any = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}
    with pytest.raises(openai.BadRequestError, match=r"cannot be compiled: .*strin"):
        client.chat.completions.create(model=NAME, messages=MESSAGES, response_format=bad)


@pytest.mark.parametrize("seed", range(5))
def test_required_tool_calls_have_arguments_valid_for_their_function(
    server: LiveServer, seed: int
) -> None:
    answer = openai_client(server).chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": "Weather in Paris for 3 days?"}],
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=1.0,
        seed=seed,
        max_tokens=256,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])


def test_a_named_function_is_the_one_called(server: LiveServer) -> None:
    answer = openai_client(server).chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": "What time is it?"}],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        seed=1,
        max_tokens=128,
    )
    [call] = answer.choices[0].message.tool_calls or []
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert call.function.name == "get_time"
    jsonschema.validate(json.loads(call.function.arguments), PARAMETERS["get_time"])


def _comparable(completion: Any) -> list[dict[str, Any]]:
    """A completion's choices without the per-answer ids."""
    return [
        {
            "index": choice.index,
            "finish_reason": choice.finish_reason,
            "content": choice.message.content,
            "calls": [
                (call.type, call.function.name, call.function.arguments)
                for call in choice.message.tool_calls or []
            ],
        }
        for choice in sorted(completion.choices, key=lambda c: c.index)
    ]


@pytest.mark.parametrize(
    "ask",
    [
        {"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False},
        {"response_format": FORMAT},
        {"tools": TOOLS},  # auto: the random model writes text; it must stream as text
    ],
    ids=["required", "json_schema", "auto"],
)
def test_a_stream_parses_like_the_whole_answer(server: LiveServer, ask: dict[str, Any]) -> None:
    client = openai_client(server)
    common: dict[str, Any] = {
        "model": NAME,
        "messages": MESSAGES,
        "seed": 11,
        "temperature": 1.0,
        "max_tokens": 96,
        "n": 2,
        **ask,
    }
    whole = client.chat.completions.create(**common)
    with client.chat.completions.stream(**common) as stream:
        events = list(stream)
        # The SDK's accumulation of the chunks; `get_final_completion` also parses it, and
        # refuses an answer cut by max_tokens (the free text of "auto" is).
        streamed = stream.current_completion_snapshot
        if "tool_choice" in ask or "response_format" in ask:
            streamed = stream.get_final_completion()
    assert _comparable(streamed) == _comparable(whole)
    if "tool_choice" in ask:
        deltas = [
            event.chunk.choices[0].delta
            for event in events
            if event.type == "chunk" and event.chunk.choices
        ]
        assert not any(d.content for d in deltas), "tool-call markup reached the client"
        assert any(d.tool_calls for d in deltas)


# -- guardrails ------------------------------------------------------------------------------
# The grammar makes the random-weight model write exactly a chosen text (a JSON string with
# one allowed value), so the output guardrails meet PII and keywords in real answers and
# real streams.
SAID = "Reach me at jane.doe@example.com or 123-45-6789, the secret plan."


def _saying(text: str) -> Any:
    schema = {"type": "string", "enum": [text]}
    return {"type": "json_schema", "json_schema": {"name": "said", "schema": schema}}


@contextlib.contextmanager
def guardrails(server: LiveServer, **directions: dict[str, Any]) -> Iterator[None]:
    """The endpoint's guardrails set (with the inference table on) for the block, then off."""
    with server.client() as http:
        gateway = {"guardrails": directions, "inference_table_config": {"enabled": True}}
        put = http.put(f"/api/2.0/serving-endpoints/{NAME}/ai-gateway", json=gateway)
        assert put.status_code == 200, put.text
        server.plane.gateway.targets.forget(NAME)
        try:
            yield
        finally:
            http.put(f"/api/2.0/serving-endpoints/{NAME}/ai-gateway", json={})
            server.plane.gateway.targets.forget(NAME)


def _both_ways(server: LiveServer, text: str, n: int = 1) -> tuple[Any, list[Any]]:
    """The answer saying `text`, whole and streamed (the raw chunks)."""
    client = openai_client(server)
    ask: dict[str, Any] = {
        "model": NAME,
        "messages": MESSAGES,
        "response_format": _saying(text),
        "max_tokens": 128,
        "n": n,
    }
    whole = client.chat.completions.create(**ask)
    chunks = list(client.chat.completions.create(**ask, stream=True))
    return whole, chunks


def _streamed(chunks: list[Any]) -> dict[int, tuple[str, str | None]]:
    texts: dict[int, str] = {}
    reasons: dict[int, str | None] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            reasons[choice.index] = choice.finish_reason or reasons.get(choice.index)
    return {i: (texts[i], reasons[i]) for i in texts}


def _leaked(chunks: list[Any], *secrets: str) -> bool:
    """Whether any secret reached the client, in one chunk or across chunk boundaries."""
    sent = "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices)
    return any(secret in sent for secret in secrets)


def test_output_pii_is_masked_in_answers_and_streams(server: LiveServer) -> None:
    with guardrails(server, output={"pii": {"behavior": "MASK"}}):
        whole, chunks = _both_ways(server, SAID, n=2)
    masked = '"Reach me at [EMAIL_ADDRESS] or [US_SSN], the secret plan."'
    assert [c.message.content for c in whole.choices] == [masked, masked]
    assert _streamed(chunks) == {0: (masked, "stop"), 1: (masked, "stop")}
    assert not _leaked(chunks, "jane.doe", "example.com", "6789")
    assert len(chunks) > 10, "the answer streamed in many pieces, not one held-back blob"
    row = _usage_row(server, whole.id)
    assert (row["guardrail_outcome"], row["guardrail_hits"]) == ("MASKED", 4)  # 2 × 2 values


@pytest.mark.parametrize(
    ("output", "kept"),
    [
        (
            {"invalid_keywords": ["SECRET PLAN"]},
            '"Reach me at jane.doe@example.com or 123-45-6789, the ',
        ),
        ({"pii": {"behavior": "BLOCK"}}, '"Reach me at '),
    ],
    ids=["keyword", "pii"],
)
def test_a_blocked_span_never_reaches_the_client(
    server: LiveServer, output: dict[str, Any], kept: str
) -> None:
    with guardrails(server, output=output):
        whole, chunks = _both_ways(server, SAID)
    assert whole.choices[0].message.content == kept
    assert whole.choices[0].finish_reason == "content_filter"
    assert _streamed(chunks) == {0: (kept, "content_filter")}
    blocked = SAID[len(kept) - 1 :]  # the rest, from the blocked span on
    assert not _leaked(chunks, blocked[:12])
    assert _usage_row(server, whole.id)["guardrail_outcome"] == "OUTPUT_BLOCKED"


def test_input_guardrails_block_or_mask_the_prompt(server: LiveServer) -> None:
    client = openai_client(server)
    sensitive: list[Any] = [
        {"role": "user", "content": "My SSN is 123-45-6789; mail bob@corp.example"}
    ]
    keyword = pytest.raises(openai.BadRequestError, match="input guardrails: an invalid keyword")
    with guardrails(server, input={"invalid_keywords": ["forbidden"]}), keyword:
        client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "The FORBIDDEN word"}]
        )
    with guardrails(server, input={"pii": {"behavior": "BLOCK"}}):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model=NAME, messages=sensitive)
        assert "PII (EMAIL_ADDRESS), PII (US_SSN)" in str(refused.value)
        assert "6789" not in str(refused.value)
    with guardrails(server, input={"pii": {"behavior": "MASK"}}):
        answer = client.chat.completions.create(model=NAME, messages=sensitive, max_tokens=2)
        with server.client() as http:
            logged = http.get(f"/api/2.0/serving-endpoints/{NAME}/inference-log").json()["rows"]
    mine = [r for r in logged if r["databricks_request_id"] == _request_id(answer.id)]
    assert mine[0]["request"]["messages"][0]["content"] == (
        "My SSN is [US_SSN]; mail [EMAIL_ADDRESS]"
    )
    assert (mine[0]["guardrail_outcome"], mine[0]["guardrail_hits"]) == ("MASKED", 2)
    prompt = load_tokenizer("cl100k_base").apply_chat_template(
        [{"role": "user", "content": "My SSN is [US_SSN]; mail [EMAIL_ADDRESS]"}]
    )
    assert answer.usage is not None and answer.usage.prompt_tokens == len(prompt)
    blocked = [r for r in usage_rows(server, NAME) if r["guardrail_outcome"] == "INPUT_BLOCKED"]
    assert len(blocked) == 2 and all(r["status_code"] == 400 for r in blocked)
    assert all(r["input_token_count"] == r["output_token_count"] == 0 for r in blocked)
    with server.client() as http:
        metrics = http.get("/metrics").text
    hits = [
        line
        for line in metrics.splitlines()
        if line.startswith("moeserve_guardrail_hits_total{") and f'endpoint="{NAME}"' in line
    ]
    assert any('direction="input"' in h and 'kind="INVALID_KEYWORD"' in h for h in hits)
    assert any('kind="US_SSN"' in h and 'action="MASK"' in h for h in hits)


def test_logprobs_are_refused_with_output_guardrails(server: LiveServer) -> None:
    logprobs = pytest.raises(openai.BadRequestError, match="logprobs are not available")
    with guardrails(server, output={"invalid_keywords": ["x"]}), logprobs:
        openai_client(server).chat.completions.create(
            model=NAME, messages=MESSAGES, logprobs=True, max_tokens=2
        )


# -- the guard model -------------------------------------------------------------------------
# A shared dbrx-tiny endpoint judges safety and valid_topics. Its verdict on a text is what
# the same question asked of it directly answers (greedy, constrained to the two words), so
# each test first asks it, then checks the guarded query did what that verdict says.
def _verdict(server: LiveServer, question: Question, text: str) -> bool:
    """Whether the guard model flags `text` for `question`, asked directly."""
    answer = openai_client(server).chat.completions.create(
        model=GUARD,
        messages=[
            {"role": "system", "content": question.system},
            {"role": "user", "content": text},
        ],
        response_format=_either(question.allowed, question.flagged),
        temperature=0,
        max_tokens=8,
    )
    return bool(json.loads(answer.choices[0].message.content or "") == question.flagged)


def _either(*words: str) -> Any:
    schema = {"type": "string", "enum": list(words)}
    return {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}}


PROMPTS = [f"Tell me about {topic}." for topic in (
    "invoices", "the weather", "refunds", "volcanoes", "my bill", "chess", "taxes", "poetry",
    "payment plans", "football", "late fees", "cooking", "a credit note", "the moon",
)]  # fmt: skip


def test_the_guard_model_judges_prompts_and_its_calls_are_billed(server: LiveServer) -> None:
    client = openai_client(server)
    topics = ["billing", "payments"]
    question = Question.topics(topics)
    outcomes = []
    with guardrails(server, input={"valid_topics": topics}):
        for prompt in PROMPTS:
            flagged = _verdict(server, question, f"user: {prompt}")
            messages: list[Any] = [{"role": "user", "content": prompt}]
            if flagged:
                with pytest.raises(openai.BadRequestError, match="not one of the valid topics"):
                    client.chat.completions.create(model=NAME, messages=messages, max_tokens=2)
            else:
                answer = client.chat.completions.create(model=NAME, messages=messages, max_tokens=2)
                assert answer.choices[0].message.content is not None
            outcomes.append(flagged)
    assert True in outcomes and False in outcomes, "the guard model let some through, not all"
    with guardrails(server, input={"safety": True}):  # the same way, for safety
        messages = [{"role": "user", "content": PROMPTS[0]}]
        unsafe = _verdict(server, Question.safety(), f"user: {PROMPTS[0]}")
        if unsafe:
            with pytest.raises(openai.BadRequestError, match=r"unsafe content \(safety\)"):
                client.chat.completions.create(model=NAME, messages=messages, max_tokens=2)
        else:
            client.chat.completions.create(model=NAME, messages=messages, max_tokens=2)
    judged = [r for r in usage_rows(server, GUARD) if "guardrail_for" in _context(r)]
    assert len(judged) == len(PROMPTS) + 1  # one billed guard call per judged request
    assert all(r["input_token_count"] > 0 and r["output_token_count"] > 0 for r in judged)
    judged_requests = {_context(r)["guardrail_for"] for r in judged}
    blocked = [
        r
        for r in usage_rows(server, NAME)
        if r["databricks_request_id"] in judged_requests
        and r["guardrail_outcome"] == "INPUT_BLOCKED"
    ]
    assert len(blocked) == outcomes.count(True) + unsafe  # each flagged request's own row
    assert all(r["status_code"] == 400 and r["input_token_count"] == 0 for r in blocked)


def test_the_guard_model_judges_whole_answers_and_streams(server: LiveServer) -> None:
    topics = ["billing", "payments"]
    question = Question.topics(topics)
    words = ("your invoice", "a refund", "fine weather", "chess", "late fees", "the moon")
    said = [f'"{word}"' for word in words]
    verdicts = {text: _verdict(server, question, text) for text in said}
    assert set(verdicts.values()) == {True, False}, "some answers pass, some are withheld"
    with guardrails(server, output={"valid_topics": topics}):
        for text, flagged in verdicts.items():
            whole, chunks = _both_ways(server, text[1:-1])
            expected = ("", "content_filter") if flagged else (text, "stop")
            choice = whole.choices[0]
            assert (choice.message.content, choice.finish_reason) == expected
            assert _streamed(chunks)[0] == expected
            if flagged:
                assert not _leaked(chunks, text[1:-1])


def _context(row: dict[str, Any]) -> dict[str, str]:
    """A usage row's usage_context, as the driver returned it (JSON text on SQLite)."""
    value = row["usage_context"]
    return (json.loads(value) if isinstance(value, str) else value) or {}


def _request_id(response_id: str) -> str:
    return response_id.split("-", 1)[1]


def _usage_row(server: LiveServer, response_id: str) -> dict[str, Any]:
    rows = [
        r
        for r in usage_rows(server, NAME)
        if r["databricks_request_id"] == _request_id(response_id)
    ]
    assert len(rows) == 1, rows
    return rows[0]
