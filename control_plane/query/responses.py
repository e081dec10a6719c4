"""What a query answers, in OpenAI's shapes: whole chat completions, completions and
embeddings, stream chunks, the usage chunk, errors mid-stream, and the model list; and a
streamed answer on the wire (server-sent events ending in `data: [DONE]`).

Built from what the replica returned (`usage` is always the engine's count: the prompt once,
the completions of every choice) and serialized by pydantic. Nulls are sent as OpenAI sends
them (`finish_reason: null` in chunks), except where OpenAI omits the field: a chunk's
`usage` before the last, a delta's `role` after the first.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import struct
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal

from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.types import Receive, Scope, Send

from control_plane.errors import ApiError
from control_plane.query.accounting import Accounting, Direction
from control_plane.query.call_stream import CallStream, Piece, SentCall
from control_plane.query.replicas import ReplicaFailed
from control_plane.query.requests import ChatRequest, GenerationBody, TextOf
from control_plane.query.screen import OutputScreen
from control_plane.query.tool_calling import ToolUse
from workers.engine.request import Completion, TokenChunk, TokenLogprob
from workers.engine.request import Usage as EngineUsage


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


class CalledFunction(BaseModel):
    name: str
    arguments: str  # JSON text


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None  # null when the answer is tool calls
    tool_calls: list[ToolCallOut] | None = Field(default=None, exclude_if=lambda v: v is None)


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


class FunctionDelta(BaseModel):
    name: str
    arguments: str


class ToolCallDelta(BaseModel):
    index: int
    id: str
    type: Literal["function"] = "function"
    function: FunctionDelta  # a call is sent whole, once its block is complete


class Delta(BaseModel):
    role: Literal["assistant"] | None = _omitted_when_none()
    content: str | None = _omitted_when_none()
    tool_calls: list[ToolCallDelta] | None = _omitted_when_none()


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
    request_id: str, model: str, result: Completion, text_of: TextOf, use: ToolUse | None = None
) -> ChatCompletion:
    logprobs = result.logprobs or {}
    choices = []
    for i in sorted(result.texts):
        message = AssistantMessage(content=result.texts[i])
        reason: str | None = result.finish_reasons[i]
        if use is not None and use.calls_tools:  # read as a stream would: the same calls
            piece = CallStream(use).feed(result.texts[i], reason)
            calls = [_call_out(sent) for sent in piece.calls]
            message = AssistantMessage(content=piece.content, tool_calls=calls or None)
            reason = piece.finish_reason
        choices.append(
            ChatChoice(
                index=i,
                message=message,
                finish_reason=reason,
                logprobs=_chat_logprobs(logprobs.get(i), text_of),
            )
        )
    return ChatCompletion(
        id=f"chatcmpl-{request_id}",
        created=int(time.time()),
        model=model,
        choices=choices,
        usage=Usage.of(result.usage),
    )


def _call_out(sent: SentCall) -> ToolCallOut:
    return ToolCallOut(
        id=sent.id, function=CalledFunction(name=sent.call.name, arguments=sent.call.arguments)
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
    request_id: str,
    model: str,
    chunk: TokenChunk,
    text_of: TextOf,
    *,
    first: bool,
    piece: Piece | None = None,
) -> ChatCompletionChunk:
    """One streamed piece of one choice; its first piece names the assistant role. `piece`:
    what a choice that may call tools sends for this chunk instead of its text."""
    if piece is None:
        piece = Piece(content=chunk.text, finish_reason=chunk.finish_reason)
    calls = [
        ToolCallDelta(
            index=sent.index,
            id=sent.id,
            function=FunctionDelta(name=sent.call.name, arguments=sent.call.arguments),
        )
        for sent in piece.calls
    ]
    delta = Delta(
        role="assistant" if first else None, content=piece.content, tool_calls=calls or None
    )
    choice = ChatChunkChoice(
        index=chunk.index,
        delta=delta,
        finish_reason=piece.finish_reason,
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


# -- a streamed answer on the wire -----------------------------------------------------------
# Server-sent events of OpenAI chunks, the usage chunk, `data: [DONE]`, and an error event
# when the stream fails after its first byte. `respond` waits for the query's first chunk
# before any header goes out, so a query that fails before it (no replica, a prompt too
# long) gets a plain HTTP error; `ClosingStream` closes the event generator however the
# response ends (even when the client left before the first byte), so the query's
# accounting always finishes.

log = logging.getLogger(__name__)
_CLOSING: set[asyncio.Future[None]] = set()  # strong references until each close is done
DONE = "data: [DONE]\n\n"


async def respond(
    stream: AsyncGenerator[str, None], body: GenerationBody, accounting: Accounting
) -> StreamingResponse:
    """The SSE response of `stream`, once its first chunk came (its first item)."""
    await anext(stream)  # raises what failed before the first chunk
    return ClosingStream(stream, headers={"served-model-name": accounting.entity.name})


class ClosingStream(StreamingResponse):
    def __init__(self, stream: AsyncGenerator[str, None], headers: dict[str, str]) -> None:
        super().__init__(stream, media_type="text/event-stream", headers=headers)
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # In a task of its own: it runs to the end even when this one is being
            # cancelled (the client left). A finished stream closes at once.
            task = asyncio.ensure_future(self._stream.aclose())
            _CLOSING.add(task)
            task.add_done_callback(_closed)


def _closed(task: asyncio.Future[None]) -> None:
    _CLOSING.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("closing a stream failed", exc_info=task.exception())


def _event(payload: BaseModel) -> str:
    return f"data: {payload.model_dump_json()}\n\n"


async def events(
    body: GenerationBody,
    accounting: Accounting,
    first: TokenChunk,
    rest: AsyncIterator[TokenChunk],
    text_of: TextOf,
    screen: OutputScreen,
) -> AsyncIterator[str]:
    """One event per chunk; a chunk's usage counts once it was sent. Each choice's text goes
    through the output guardrails (`screen`) first, then, when the answer may call tools,
    through its `CallStream`. A choice the guardrails cut sends nothing more; once every
    choice has ended or been cut, the stream ends (the replica's request is cancelled)."""
    chat = isinstance(body, ChatRequest)
    use = body.tool_use() if isinstance(body, ChatRequest) else None
    calls: dict[int, CallStream] = {}  # per choice, when the answer may call tools
    request_id, model = accounting.request_id, accounting.entity.name
    started: set[int] = set()
    chunk: TokenChunk | None = first
    while chunk is not None:
        if screen.sends(chunk.index):
            chunk, hits, cut = screen.screen(chunk)
            if hits:
                accounting.guarded(Direction.OUTPUT, hits, blocked=cut)
            chunk, hits, cut = await screen.judged(chunk)
            if hits:
                accounting.guarded(Direction.OUTPUT, hits, blocked=cut)
            if chat:
                opening = chunk.index not in started
                piece = None
                if use is not None and use.calls_tools:
                    stream = calls.setdefault(chunk.index, CallStream(use))
                    piece = stream.feed(chunk.text, chunk.finish_reason)
                shaped = chat_chunk(request_id, model, chunk, text_of, first=opening, piece=piece)
                yield _event(shaped)
            else:
                yield _event(completion_chunk(request_id, model, chunk, text_of))
            started.add(chunk.index)
            accounting.delivered(chunk.usage, {chunk.index: chunk.text})  # sent: now it counts
            if screen.done:
                return
        chunk = await anext(rest, None)


def closing(body: GenerationBody, accounting: Accounting) -> str:
    """The last events: the usage chunk (when asked for), then `[DONE]`."""
    if not body.include_usage:
        return DONE
    chat = isinstance(body, ChatRequest)
    usage = usage_chunk(chat, accounting.request_id, accounting.entity.name, accounting.usage)
    return _event(usage) + DONE


def error_event(exc: Exception) -> str:
    """The event that ends a stream failing after its first byte. Its message is ours (an
    API error's, or a replica failure's as `replicas` words it); any other exception is a
    fault of this server: logged here, and named to the client by its type alone."""
    client_error = isinstance(exc, ApiError) and exc.status_code == 400
    if isinstance(exc, ApiError | ReplicaFailed):
        message = str(exc)
    else:
        log.error("a stream failed after its first byte", exc_info=exc)
        message = f"the server failed mid-answer ({type(exc).__name__})"
    return _event(error_chunk(message, client_error=client_error))
