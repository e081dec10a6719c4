"""What callers send to the engine and what it streams back.

`GenerationRequest` is validated at the edge (pydantic) with messages that say what to
change. `TokenChunk`s are plain dataclasses so they cross process boundaries (Ray Serve
streaming) cheaply; every chunk carries the request's usage so far, and the last chunk of
each choice carries its `finish_reason`. `aggregate(chunks)` folds a finished stream into
one `Completion`, for callers that want the whole answer in one reply.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from workers.engine.constraint import Constraint

# "content_filter": never the engine's; the gateway's output guardrails cut the choice.
FinishReason = Literal["stop", "length", "cancelled", "content_filter"]


class GenerationRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    prompt_token_ids: list[int] = Field(min_length=1)
    max_tokens: int | None = Field(
        default=None, ge=1, description="tokens to generate at most; None: up to the context"
    )
    temperature: float = Field(default=1.0, ge=0, le=2, description="0 means greedy")
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0, description="0 keeps every token")
    seed: int | None = Field(default=None, description="same seed, same prompt: same tokens")
    stop: list[str] = Field(default_factory=list, max_length=4)
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = False
    n: int = Field(default=1, ge=1, le=16, description="independent choices per prompt")
    logprobs: int | None = Field(
        default=None, ge=0, le=20, description="top alternatives to report per token"
    )
    constraint: Constraint | None = Field(
        default=None,
        description="a grammar every choice's tokens must follow (masked in the sampler); "
        "a choice whose grammar is complete finishes with 'stop'",
    )

    @field_validator("stop")
    @classmethod
    def _non_empty_stops(cls, stops: list[str]) -> list[str]:
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return stops


def token_limit(request: GenerationRequest, max_seq_len: int) -> int:
    """How many tokens `request` may generate within a context of `max_seq_len` tokens;
    a ValueError says what to change when the prompt or `max_tokens` does not fit."""
    prompt = len(request.prompt_token_ids)
    room = max_seq_len - prompt
    if room < 1:
        raise ValueError(
            f"the prompt has {prompt} tokens; this model's context is {max_seq_len}"
            " tokens, so shorten the prompt"
        )
    if request.max_tokens is None:
        return room
    if request.max_tokens > room:
        raise ValueError(
            f"max_tokens {request.max_tokens} + prompt {prompt} tokens exceed the "
            f"context of {max_seq_len}; use max_tokens <= {room}"
        )
    return request.max_tokens


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass(frozen=True)
class TokenChunk:
    request_id: str
    index: int  # which of the request's n choices
    token_ids: list[int]  # new tokens (a stop token is counted in usage, not listed)
    text: str  # new text, held back while it may still turn into a stop sequence
    usage: Usage  # the whole request so far: prompt once, completions of all choices
    finish_reason: FinishReason | None = None
    logprobs: list[TokenLogprob] | None = None


@dataclass(frozen=True)
class Completion:
    """A finished request in one piece; every mapping is keyed by choice index."""

    request_id: str
    texts: dict[int, str]
    token_ids: dict[int, list[int]]
    finish_reasons: dict[int, FinishReason]
    usage: Usage  # the whole request: prompt once, the completions of every choice
    logprobs: dict[int, list[TokenLogprob]] | None = None  # None unless requested


def aggregate(chunks: Iterable[TokenChunk]) -> Completion:
    """Fold a finished stream (every choice has its `finish_reason`) into a `Completion`."""
    texts: dict[int, list[str]] = {}
    token_ids: dict[int, list[int]] = {}
    logprobs: dict[int, list[TokenLogprob]] = {}
    finish_reasons: dict[int, FinishReason] = {}
    last: TokenChunk | None = None
    for chunk in chunks:
        texts.setdefault(chunk.index, []).append(chunk.text)
        token_ids.setdefault(chunk.index, []).extend(chunk.token_ids)
        if chunk.logprobs is not None:
            logprobs.setdefault(chunk.index, []).extend(chunk.logprobs)
        if chunk.finish_reason is not None:
            finish_reasons[chunk.index] = chunk.finish_reason
        last = chunk
    if last is None:
        raise ValueError("no chunks to aggregate")
    unfinished = sorted(set(texts) - set(finish_reasons))
    if unfinished:
        raise ValueError(f"the stream ended before choices {unfinished} finished")
    indexes = sorted(texts)
    return Completion(
        request_id=last.request_id,
        texts={i: "".join(texts[i]) for i in indexes},
        token_ids={i: token_ids[i] for i in indexes},
        finish_reasons={i: finish_reasons[i] for i in indexes},
        usage=last.usage,  # every chunk carries the usage so far; the last one is final
        logprobs={i: logprobs.get(i, []) for i in indexes} if logprobs else None,
    )
