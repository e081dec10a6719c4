"""A query's prompt as token ids, per candidate entity, tokenized on first use.

Entities of one endpoint may use different tokenizers (DBRX's cl100k, Mixtral's
SentencePiece), so the ids belong to an entity; a fallback entity's prompt is tokenized only
if the first candidate fails, and entities sharing a tokenizer share one tokenization.
"""

from __future__ import annotations

from typing import Any

from control_plane.endpoints.config import ServedEntity
from control_plane.gateway.protocol import Body, ChatBody, CompletionBody
from control_plane.gateway.runtime import Gateway


class PromptIds:
    def __init__(self, gateway: Gateway, body: Body) -> None:
        self._gateway = gateway
        self._body = body
        self._by_tokenizer: dict[int, list[list[int]]] = {}

    def of(self, entity: ServedEntity) -> list[list[int]]:
        """The body's token ids under `entity`'s tokenizer (one list; embeddings: one per
        input)."""
        tokenizer = self._gateway.tokenizer(entity)
        key = id(tokenizer)  # the gateway keeps each tokenizer for its lifetime
        if key not in self._by_tokenizer:
            self._by_tokenizer[key] = _tokenize(tokenizer, self._body)
        return self._by_tokenizer[key]


def _tokenize(tokenizer: Any, body: Body) -> list[list[int]]:
    if isinstance(body, ChatBody):
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        return [tokenizer.apply_chat_template(messages)]
    if isinstance(body, CompletionBody):
        return [tokenizer.encode(body.text())]
    return [tokenizer.encode(i) if isinstance(i, str) else i for i in body.items()]
