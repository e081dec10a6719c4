"""What callers send to the engine and what it streams back.

`GenerationRequest` is validated at the edge (pydantic) with messages that say what to
change. `TokenChunk`s are plain dataclasses so they cross process boundaries (Ray Serve
streaming) cheaply; every chunk carries the request's usage so far, and the last chunk of
each choice carries its `finish_reason`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

FinishReason = Literal["stop", "length", "cancelled"]


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

    @field_validator("stop")
    @classmethod
    def _non_empty_stops(cls, stops: list[str]) -> list[str]:
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return stops


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
