"""OpenAI-compatible request bodies and response shapes of the query API.

Requests become one `GenerationRequest`; engine chunks become chat/completion responses
or SSE chunks. The engine's usage (prompt once, completions of every choice) is reported
as is.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from workers.engine import GenerationRequest, TokenChunk, Usage


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str


class _Params(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0)
    n: int = Field(default=1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    client_request_id: str | None = None

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatBody(_Params):
    messages: list[Message] = Field(min_length=1)


class CompletionBody(_Params):
    prompt: str = Field(min_length=1)


def new_request_id() -> str:
    return uuid.uuid4().hex


def generation_request(
    body: _Params, prompt_ids: list[int], request_id: str, max_tokens: int | None
) -> GenerationRequest:
    return GenerationRequest(
        request_id=request_id,
        prompt_token_ids=prompt_ids,
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        stop=body.stops(),
        n=body.n,
    )


def _usage(usage: Usage | None) -> dict[str, int]:
    prompt = usage.prompt_tokens if usage else 0
    completion = usage.completion_tokens if usage else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def full_response(
    kind: Literal["chat", "completion"],
    request_id: str,
    model: str,
    texts: dict[int, str],
    finish: dict[int, str | None],
    usage: Usage | None,
) -> dict[str, Any]:
    choices: list[dict[str, Any]] = []
    for index in sorted(texts):
        choice: dict[str, Any] = {"index": index, "finish_reason": finish.get(index)}
        if kind == "chat":
            choice["message"] = {"role": "assistant", "content": texts[index]}
        else:
            choice["text"] = texts[index]
        choices.append(choice)
    return {
        "id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{request_id}",
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": _usage(usage),
    }


def stream_chunk(
    kind: Literal["chat", "completion"], request_id: str, model: str, chunk: TokenChunk, first: bool
) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": chunk.index, "finish_reason": chunk.finish_reason}
    if kind == "chat":
        delta: dict[str, str] = {"content": chunk.text}
        if first:
            delta["role"] = "assistant"
        choice["delta"] = delta
    else:
        choice["text"] = chunk.text
    return {
        "id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{request_id}",
        "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
    }
