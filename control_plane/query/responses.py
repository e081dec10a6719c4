"""What a query answers, in OpenAI's shapes: whole chat completions, completions and
embeddings, stream chunks, the usage chunk, errors mid-stream, and the model list.

Built from what the replica returned (`usage` is always the engine's count: the prompt once,
the completions of every choice) and serialized by pydantic. Nulls are sent as OpenAI sends
them (`finish_reason: null` in chunks), except where OpenAI omits the field: a chunk's
`usage` before the last, a delta's `role` after the first.
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from workers.engine.request import Completion, TokenChunk, TokenLogprob
from workers.engine.request import Usage as EngineUsage

TextOf = Callable[[int], str]  # token id -> its text


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, usage: EngineUsage) -> Usage:
        return cls(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
        )


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprobOut]


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: ChatLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


def _omitted_when_none() -> Any:
    return Field(default=None, exclude_if=lambda value: value is None)


class Delta(BaseModel):
    role: Literal["assistant"] | None = _omitted_when_none()
    content: str


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: str | None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = _omitted_when_none()


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None


class TextCompletion(BaseModel):
    """A whole completion, and (with `usage` unset until the last) each stream chunk."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = _omitted_when_none()


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[Embedding]
    usage: EmbeddingUsage


class StreamError(BaseModel):
    message: str
    type: Literal["invalid_request_error", "server_error"]
    code: str


class ErrorChunk(BaseModel):
    """A stream that fails after its first byte ends with this chunk."""

    error: StreamError


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# -- builders --------------------------------------------------------------------------------
def _chat_logprobs(items: list[TokenLogprob] | None, text_of: TextOf) -> ChatLogprobs | None:
    if not items:
        return None

    def entry(token_id: int, logprob: float) -> TopLogprob:
        text = text_of(token_id)
        return TopLogprob(token=text, logprob=logprob, bytes=list(text.encode()))

    return ChatLogprobs(
        content=[
            TokenLogprobOut(
                **entry(item.token_id, item.logprob).model_dump(),
                top_logprobs=[entry(t, lp) for t, lp in item.top],
            )
            for item in items
        ]
    )


def _completion_logprobs(
    items: list[TokenLogprob] | None, text_of: TextOf
) -> CompletionLogprobs | None:
    if not items:
        return None
    tokens = [text_of(item.token_id) for item in items]
    offsets, offset = [], 0
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return CompletionLogprobs(
        tokens=tokens,
        token_logprobs=[item.logprob for item in items],
        top_logprobs=[{text_of(t): lp for t, lp in item.top} for item in items],
        text_offset=offsets,
    )


def chat_completion(
    request_id: str, model: str, result: Completion, text_of: TextOf
) -> ChatCompletion:
    logprobs = result.logprobs or {}
    return ChatCompletion(
        id=f"chatcmpl-{request_id}",
        created=int(time.time()),
        model=model,
        choices=[
            ChatChoice(
                index=i,
                message=AssistantMessage(content=result.texts[i]),
                finish_reason=result.finish_reasons[i],
                logprobs=_chat_logprobs(logprobs.get(i), text_of),
            )
            for i in sorted(result.texts)
        ],
        usage=Usage.of(result.usage),
    )


def text_completion(
    request_id: str, model: str, result: Completion, text_of: TextOf
) -> TextCompletion:
    logprobs = result.logprobs or {}
    return TextCompletion(
        id=f"cmpl-{request_id}",
        created=int(time.time()),
        model=model,
        choices=[
            CompletionChoice(
                index=i,
                text=result.texts[i],
                finish_reason=result.finish_reasons[i],
                logprobs=_completion_logprobs(logprobs.get(i), text_of),
            )
            for i in sorted(result.texts)
        ],
        usage=Usage.of(result.usage),
    )


def chat_chunk(
    request_id: str, model: str, chunk: TokenChunk, text_of: TextOf, *, first: bool
) -> ChatCompletionChunk:
    """One streamed piece of one choice; its first piece names the assistant role."""
    delta = Delta(role="assistant", content=chunk.text) if first else Delta(content=chunk.text)
    choice = ChatChunkChoice(
        index=chunk.index,
        delta=delta,
        finish_reason=chunk.finish_reason,
        logprobs=_chat_logprobs(chunk.logprobs, text_of),
    )
    return ChatCompletionChunk(
        id=f"chatcmpl-{request_id}", created=int(time.time()), model=model, choices=[choice]
    )


def completion_chunk(
    request_id: str, model: str, chunk: TokenChunk, text_of: TextOf
) -> TextCompletion:
    choice = CompletionChoice(
        index=chunk.index,
        text=chunk.text,
        finish_reason=chunk.finish_reason,
        logprobs=_completion_logprobs(chunk.logprobs, text_of),
    )
    return TextCompletion(
        id=f"cmpl-{request_id}", created=int(time.time()), model=model, choices=[choice]
    )


def usage_chunk(
    chat: bool, request_id: str, model: str, usage: EngineUsage
) -> ChatCompletionChunk | TextCompletion:
    """`stream_options.include_usage`: the last chunk, with no choices."""
    if chat:
        return ChatCompletionChunk(
            id=f"chatcmpl-{request_id}",
            created=int(time.time()),
            model=model,
            choices=[],
            usage=Usage.of(usage),
        )
    return TextCompletion(
        id=f"cmpl-{request_id}",
        created=int(time.time()),
        model=model,
        choices=[],
        usage=Usage.of(usage),
    )


def error_chunk(message: str, *, client_error: bool) -> ErrorChunk:
    kind: Literal["invalid_request_error", "server_error"] = (
        "invalid_request_error" if client_error else "server_error"
    )
    code = "BAD_REQUEST" if client_error else "INTERNAL_ERROR"
    return ErrorChunk(error=StreamError(message=message, type=kind, code=code))


def embedding_list(
    model: str, vectors: list[list[float]], prompt_tokens: int, encoding: str
) -> EmbeddingList:
    def encoded(vector: list[float]) -> list[float] | str:
        if encoding == "base64":
            return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        return vector

    return EmbeddingList(
        model=model,
        data=[Embedding(index=i, embedding=encoded(v)) for i, v in enumerate(vectors)],
        usage=EmbeddingUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
    )
