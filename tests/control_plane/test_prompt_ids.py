"""A query's prompt ids: per entity's tokenizer, tokenized only when an entity needs them."""

from __future__ import annotations

from typing import cast

from control_plane.endpoints.config import ServedEntity
from control_plane.gateway.prompts import PromptIds
from control_plane.gateway.protocol import parse_body
from control_plane.gateway.runtime import Gateway
from tests.control_plane.domain_factories import served_entity
from workers.tokenizer import load_tokenizer


class CountingTokenizer:
    def __init__(self, name: str) -> None:
        self.inner = load_tokenizer(name)
        self.calls = 0

    def encode(self, text: str) -> list[int]:
        self.calls += 1
        return self.inner.encode(text)


class Tokenizers:
    """The one thing `PromptIds` asks of the gateway: an entity's tokenizer, kept per name."""

    def __init__(self) -> None:
        self.by_name: dict[str, CountingTokenizer] = {}

    def tokenizer(self, entity: ServedEntity) -> CountingTokenizer:
        name = entity.model_source.tokenizer_name()
        return self.by_name.setdefault(name, CountingTokenizer(name))


def test_prompts_are_tokenized_on_first_use_and_shared_per_tokenizer() -> None:
    tokenizers = Tokenizers()
    body = parse_body("completion", {"prompt": "Hello there, moeserve"})
    prompts = PromptIds(cast(Gateway, tokenizers), body)
    v1, v2 = served_entity("v1"), served_entity("v2")  # both dbrx-tiny: cl100k_base

    assert tokenizers.by_name == {}  # nothing until an entity asks
    first = prompts.of(v1)
    assert first == [load_tokenizer("cl100k_base").encode("Hello there, moeserve")]
    assert prompts.of(v2) is first  # same tokenizer: one tokenization
    assert tokenizers.by_name["cl100k_base"].calls == 1
