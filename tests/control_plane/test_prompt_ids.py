"""A query's prompt ids: per entity's tokenizer, tokenized only when an entity needs them."""

from __future__ import annotations

from typing import cast

from control_plane.query.requests import PromptIds, QueryKind, Tokenizers, parse_request
from tests.control_plane.domain_factories import served_entity
from workers.tokenizer import Tokenizer, load_tokenizer


class CountingTokenizer:
    def __init__(self, name: str) -> None:
        self.inner = load_tokenizer(name)
        self.calls = 0

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        self.calls += 1
        return self.inner.encode(text)


def test_prompts_are_tokenized_on_first_use_and_shared_per_tokenizer() -> None:
    loaded: dict[str, CountingTokenizer] = {}

    def load(name: str) -> Tokenizer:
        return cast(Tokenizer, loaded.setdefault(name, CountingTokenizer(name)))

    body = parse_request(QueryKind.COMPLETIONS, {"prompt": "Hello there, moeserve"})
    prompts = PromptIds(body, Tokenizers(load))
    v1, v2 = served_entity("v1"), served_entity("v2")  # both dbrx-tiny: cl100k_base

    assert loaded == {}  # nothing until an entity asks
    first = prompts.of(v1)
    assert first == [load_tokenizer("cl100k_base").encode("Hello there, moeserve")]
    assert prompts.of(v2) is first  # same tokenizer: one tokenization
    assert loaded["cl100k_base"].calls == 1
