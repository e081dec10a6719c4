"""OpenAI fidelity, through the real `openai` client: parameters are honoured or refused by
name, never silently ignored; OpenAI's types and ranges hold; an endpoint answers its own
task only. Each of these was silently wrong before (accepted and ignored, coerced, or
answered by the wrong kind of endpoint)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.control_plane.conftest import LiveServer
from tests.control_plane.query_fixtures import create_endpoint, instant_ray_server, openai_client

SUFFIX = uuid.uuid4().hex[:6]
CHAT = f"fidelity-chat-{SUFFIX}"
COMPLETE = f"fidelity-complete-{SUFFIX}"
EMBED = f"fidelity-embed-{SUFFIX}"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
TOKENS_PER_CHOICE = 6  # the instant replicas' answer length when nothing limits it


@pytest.fixture(scope="module")
def server(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    entity = {
        "entity_name": "dbrx-tiny",
        "entity_version": "1",
        "workload_size": "Small",
        "environment_vars": {"MOESERVE_INSTANT_TOKENS": str(TOKENS_PER_CHOICE)},
    }
    with instant_ray_server(tmp_path_factory.mktemp("fidelity")) as live, live.client() as http:
        create_endpoint(http, CHAT, [entity])
        create_endpoint(http, COMPLETE, [entity], task="llm/v1/completions")
        create_endpoint(http, EMBED, [entity], task="llm/v1/embeddings")
        yield live


@pytest.fixture(scope="module")
def client(server: LiveServer) -> openai.OpenAI:
    return openai_client(server)


def test_max_completion_tokens_is_honoured_and_the_smaller_limit_wins(
    client: openai.OpenAI,
) -> None:
    def completion_tokens(**limits: Any) -> int:
        usage = client.chat.completions.create(model=CHAT, messages=MESSAGES, **limits).usage
        assert usage is not None
        return usage.completion_tokens

    assert completion_tokens() == TOKENS_PER_CHOICE
    assert completion_tokens(max_completion_tokens=2) == 2
    assert completion_tokens(max_tokens=4, max_completion_tokens=3) == 3
    assert completion_tokens(max_tokens=2, max_completion_tokens=5) == 2


@pytest.mark.parametrize(
    ("parameters", "named"),
    [
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"tool_choice": "required"}, "tool_choice"),  # with no tools to call
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"logit_bias": {"15339": 5}}, "logit_bias"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": -1}, "frequency_penalty"),
        ({"presence_penalty": 5}, "presence_penalty"),  # outside OpenAI's [-2, 2]
        ({"user": "ana"}, "user"),
    ],
)
def test_unimplemented_chat_parameters_are_refused_by_name(
    client: openai.OpenAI, parameters: dict[str, Any], named: str
) -> None:
    with pytest.raises(openai.BadRequestError, match=named):
        client.chat.completions.create(model=CHAT, messages=MESSAGES, **parameters)


def test_no_op_defaults_are_accepted(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=CHAT, messages=MESSAGES, presence_penalty=0, frequency_penalty=0, logit_bias={}
    )
    assert answer.choices[0].message.content


@pytest.mark.parametrize(
    ("parameters", "named"),
    [({"best_of": 2}, "best_of"), ({"echo": True}, "echo"), ({"suffix": "end"}, "suffix")],
)
def test_unimplemented_completion_parameters_are_refused_by_name(
    client: openai.OpenAI, parameters: dict[str, Any], named: str
) -> None:
    with pytest.raises(openai.BadRequestError, match=named):
        client.completions.create(model=COMPLETE, prompt="hi", max_tokens=1, **parameters)


def test_embedding_dimensions_are_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        client.embeddings.create(model=EMBED, input="hi", dimensions=8)


@pytest.mark.parametrize(
    ("extra", "named"), [({"max_tokens": "5"}, "max_tokens"), ({"stream": "yes"}, "stream")]
)
def test_values_are_never_coerced(client: openai.OpenAI, extra: dict[str, Any], named: str) -> None:
    with pytest.raises(openai.BadRequestError, match=named):
        client.chat.completions.create(model=CHAT, messages=MESSAGES, extra_body=extra)


def test_an_endpoint_answers_its_own_task_only(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="llm/v1/chat"):
        client.embeddings.create(model=CHAT, input="hi")
    with pytest.raises(openai.BadRequestError, match="llm/v1/chat"):
        client.completions.create(model=CHAT, prompt="hi", max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="llm/v1/embeddings"):
        client.chat.completions.create(model=EMBED, messages=MESSAGES)
    assert client.embeddings.create(model=EMBED, input="hi").data


def test_ambiguous_native_bodies_are_refused(server: LiveServer) -> None:
    body = {"messages": MESSAGES, "input": "hi"}
    with server.client() as http:
        response = http.post(f"/serving-endpoints/{CHAT}/invocations", json=body)
        assert response.status_code == 400
        assert "`input`" in response.json()["message"]
        answered = http.post(f"/serving-endpoints/{EMBED}/invocations", json={"input": "hi"})
        assert answered.status_code == 200 and answered.json()["object"] == "list"
