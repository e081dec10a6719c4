"""A query's prompt as token ids, per candidate entity, tokenized on first use.

Entities of one endpoint may use different tokenizers (DBRX's cl100k, Mixtral's
SentencePiece), so the ids belong to an entity; a fallback entity's prompt is tokenized only
if the first candidate fails, and entities sharing a tokenizer share one tokenization.
`Tokenizers` keeps each tokenizer a process has loaded, by name.
"""

from __future__ import annotations

from collections.abc import Callable

from control_plane.endpoints.config import ServedEntity
from control_plane.query.requests import ChatRequest, CompletionRequest, QueryRequest
from control_plane.query.responses import TextOf
from workers.tokenizer import Tokenizer, load_tokenizer


class Tokenizers:
    def __init__(self, load: Callable[[str], Tokenizer] = load_tokenizer) -> None:
        self._load = load
        self._by_name: dict[str, Tokenizer] = {}

    def of(self, entity: ServedEntity) -> Tokenizer:
        name = entity.model_source.tokenizer_name()
        tokenizer = self._by_name.get(name)
        if tokenizer is None:
            tokenizer = self._by_name[name] = self._load(name)
        return tokenizer

    def token_text(self, entity: ServedEntity) -> TextOf:
        """token id -> its text under `entity`'s tokenizer (for logprobs)."""
        tokenizer = self.of(entity)
        return lambda token_id: tokenizer.decode([token_id])


class PromptIds:
    def __init__(self, body: QueryRequest, tokenizers: Tokenizers) -> None:
        self._body = body
        self._tokenizers = tokenizers
        self._by_tokenizer: dict[int, list[list[int]]] = {}

    def of(self, entity: ServedEntity) -> list[list[int]]:
        """The body's token ids under `entity`'s tokenizer (one list; embeddings: one per
        input)."""
        tokenizer = self._tokenizers.of(entity)
        key = id(tokenizer)  # the process keeps each tokenizer for its lifetime
        if key not in self._by_tokenizer:
            self._by_tokenizer[key] = _tokenize(tokenizer, self._body)
        return self._by_tokenizer[key]


def _tokenize(tokenizer: Tokenizer, body: QueryRequest) -> list[list[int]]:
    if isinstance(body, ChatRequest):
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        return [tokenizer.apply_chat_template(messages)]
    if isinstance(body, CompletionRequest):
        return [tokenizer.encode(body.text())]
    return [tokenizer.encode(i) if isinstance(i, str) else i for i in body.items()]
