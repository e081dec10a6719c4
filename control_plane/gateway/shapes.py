"""OpenAI response shapes: whole responses, SSE chunks, embeddings, logprobs, usage.

Pure functions over what the replica returned; `usage` is always the engine's count
(prompt once, the completions of every choice).
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from workers.engine.request import TokenLogprob, Usage

TextOf = Callable[[int], str]  # token id -> its text
GenKind = Literal["chat", "completion"]


@dataclass(frozen=True)
class Choice:
    index: int
    text: str
    finish_reason: str | None
    logprobs: list[TokenLogprob] | None = None


def usage_dict(usage: Usage | None) -> dict[str, int]:
    prompt = usage.prompt_tokens if usage else 0
    completion = usage.completion_tokens if usage else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _response_id(kind: GenKind, request_id: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{request_id}"


def chat_logprobs(items: list[TokenLogprob], text_of: TextOf) -> dict[str, Any]:
    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        text = text_of(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {
        "content": [
            {
                **entry(item.token_id, item.logprob),
                "top_logprobs": [entry(t, lp) for t, lp in item.top],
            }
            for item in items
        ]
    }


def completion_logprobs(items: list[TokenLogprob], text_of: TextOf, offset: int) -> dict[str, Any]:
    tokens = [text_of(item.token_id) for item in items]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": [item.logprob for item in items],
        "top_logprobs": [{text_of(t): lp for t, lp in item.top} for item in items],
        "text_offset": offsets,
    }


def _choice(kind: GenKind, choice: Choice, text_of: TextOf, *, delta: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"index": choice.index, "finish_reason": choice.finish_reason}
    if kind == "chat":
        out["delta" if delta else "message"] = (
            {"content": choice.text} if delta else {"role": "assistant", "content": choice.text}
        )
        out["logprobs"] = chat_logprobs(choice.logprobs, text_of) if choice.logprobs else None
    else:
        out["text"] = choice.text
        out["logprobs"] = (
            completion_logprobs(choice.logprobs, text_of, 0) if choice.logprobs else None
        )
    return out


def full_response(
    kind: GenKind,
    request_id: str,
    model: str,
    choices: list[Choice],
    usage: Usage | None,
    text_of: TextOf,
) -> dict[str, Any]:
    return {
        "id": _response_id(kind, request_id),
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [_choice(kind, c, text_of, delta=False) for c in choices],
        "usage": usage_dict(usage),
    }


def stream_chunk(
    kind: GenKind, request_id: str, model: str, choice: Choice, text_of: TextOf, *, first: bool
) -> dict[str, Any]:
    body = _choice(kind, choice, text_of, delta=True)
    if kind == "chat" and first:
        body["delta"]["role"] = "assistant"
    return {
        "id": _response_id(kind, request_id),
        "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [body],
    }


def usage_chunk(kind: GenKind, request_id: str, model: str, usage: Usage | None) -> dict[str, Any]:
    """`stream_options.include_usage`: the last chunk, with no choices."""
    return {
        "id": _response_id(kind, request_id),
        "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": usage_dict(usage),
    }


def error_chunk(message: str, code: str) -> dict[str, Any]:
    """An error after the first byte: a chunk with a top-level `error`, then the stream ends."""
    return {"error": {"message": message, "type": "server_error", "code": code}}


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def embeddings_response(
    model: str, vectors: list[list[float]], prompt_tokens: int, encoding: str = "float"
) -> Any:
    return {
        "object": "list",
        "model": model,
        "data": [
            {"object": "embedding", "index": i, "embedding": _encoded(vector, encoding)}
            for i, vector in enumerate(vectors)
        ],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
