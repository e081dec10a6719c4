"""`InstantEngine`: answers every request at once, without a model, for measuring the rest.

It exists to measure and test the serving path — gateway, Ray Serve handles, streaming,
accounting, rollouts — with no model compute in the way, and is never used for real
endpoints. It has the face `LLMServer` drives (`generate`, `embed`, `num_in_flight`,
`stats`, `check_health`, `drain`, `close`), so a replica built with
`engine_factory=instant_engine_factory` behaves like a real one whose model is free.

What it answers, deterministically:
- `generate`: each of the `n` choices emits `min(max_tokens or K, K)` tokens, K =
  `tokens_per_choice`; token i of a choice is `FIRST_TOKEN_ID + i` with the text
  `" tok{token_id}"` (no tokenizer). The finish reason is "length" when `max_tokens` ended
  the choice, else "stop". Usage counts the prompt once and every emitted token of every
  choice, as the real engine does. `stop` strings and stop token ids are not applied;
  a prompt or `max_tokens` past the context is refused as the real engine refuses it.
- `embed`: a unit-length pseudo-random vector seeded by the token ids.
An optional delay before each round of tokens (`token_delay_s`) makes streams last a while,
e.g. to keep clients streaming during a rollout.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncGenerator

from workers.engine.async_engine import EngineDrainingError
from workers.engine.embedding import EmbeddingResult, check_embedding_inputs
from workers.engine.request import (
    FinishReason,
    GenerationRequest,
    TokenChunk,
    TokenLogprob,
    Usage,
    token_limit,
)
from workers.serve.config import WorkerAppConfig

TOKENS_ENV = "MOESERVE_INSTANT_TOKENS"
TOKEN_DELAY_ENV = "MOESERVE_INSTANT_TOKEN_DELAY_S"
START_DELAY_ENV = "MOESERVE_INSTANT_START_DELAY_S"
FAIL_ENV = "MOESERVE_INSTANT_FAIL_AFTER_TOKENS"
DEFAULT_TOKENS_PER_CHOICE = 4
DEFAULT_TOKEN_DELAY_S = 0.0
FIRST_TOKEN_ID = 1000
EMBEDDING_DIM = 16
MAX_SEQ_LEN = 4096  # the tiny presets' context, so input checks match a small real replica


class InstantEngineFailure(RuntimeError):
    """The failure `fail_after_tokens` injects (a server-side error, not a client one)."""


def instant_token_text(token_id: int) -> str:
    return f" tok{token_id}"


class InstantEngine:
    def __init__(
        self,
        *,
        tokens_per_choice: int = DEFAULT_TOKENS_PER_CHOICE,
        token_delay_s: float = DEFAULT_TOKEN_DELAY_S,
        max_seq_len: int = MAX_SEQ_LEN,
        embedding_dim: int = EMBEDDING_DIM,
        fail_after_tokens: int | None = None,
    ) -> None:
        if tokens_per_choice < 1:
            raise ValueError(f"tokens_per_choice must be at least 1, got {tokens_per_choice}")
        if token_delay_s < 0:
            raise ValueError(f"token_delay_s must be 0 or more, got {token_delay_s}")
        self.tokens_per_choice = tokens_per_choice
        self.token_delay_s = token_delay_s
        self.max_seq_len = max_seq_len
        self.embedding_dim = embedding_dim
        # Tests of failure handling: every request fails after this many tokens per choice
        # (0: before the first token, which fallback may retry elsewhere).
        self.fail_after_tokens = fail_after_tokens
        self._running: set[str] = set()
        self._draining = False
        self._closed = False
        self._finished = 0
        self._cancelled = 0

    # -- lifecycle ----------------------------------------------------------------------
    def check_health(self) -> None:
        """Always healthy: there is no step loop to die."""

    @property
    def num_in_flight(self) -> int:
        return len(self._running)

    def stats(self) -> dict[str, int]:
        return {
            "in_flight_requests": self.num_in_flight,
            "finished_requests": self._finished,
            "cancelled_requests": self._cancelled,
        }

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new requests; wait up to `timeout_s` for running streams, then end them."""
        self._draining = True
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._running and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        drained = not self._running
        await self.close()
        return drained

    async def close(self) -> None:
        """Streams still running end with `EngineDrainingError` before their next token."""
        self._draining = self._closed = True

    # -- requests -----------------------------------------------------------------------
    def _check_accepting(self) -> None:
        if self._draining:
            raise EngineDrainingError("this replica is draining; retry on another one")

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenChunk, None]:
        """One chunk per token, choices interleaved; see the module docstring."""
        self._check_accepting()
        if request.request_id in self._running:
            raise ValueError(f"request id {request.request_id!r} is already running")
        limit = min(token_limit(request, self.max_seq_len), self.tokens_per_choice)
        if self.fail_after_tokens == 0:
            raise InstantEngineFailure("injected failure before the first token")
        self._running.add(request.request_id)
        finished = False
        try:
            for position in range(limit):
                if position and position == self.fail_after_tokens:
                    raise InstantEngineFailure(f"injected failure after {position} tokens")
                if self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
                if self._closed:
                    raise EngineDrainingError("the replica shut down before the request finished")
                for chunk in _round(request, position, limit):
                    yield chunk
            finished = True
        finally:
            self._running.discard(request.request_id)
            if finished:
                self._finished += 1
            else:
                self._cancelled += 1

    async def embed(self, inputs: list[list[int]]) -> EmbeddingResult:
        """A unit-length vector per input, the same for the same token ids."""
        self._check_accepting()
        check_embedding_inputs(inputs, self.max_seq_len)
        return EmbeddingResult.of(inputs, [self._vector(ids) for ids in inputs])

    def _vector(self, token_ids: list[int]) -> list[float]:
        rng = random.Random(hash(tuple(token_ids)))  # int hashes are the same in every process
        values = [rng.gauss(0.0, 1.0) for _ in range(self.embedding_dim)]
        norm = math.sqrt(sum(v * v for v in values)) or 1.0
        return [v / norm for v in values]


def _round(request: GenerationRequest, position: int, limit: int) -> list[TokenChunk]:
    """The chunks of token `position` for every choice of a request cut at `limit` tokens."""
    token_id = FIRST_TOKEN_ID + position
    last = position == limit - 1
    reason: FinishReason = "length" if request.max_tokens == limit else "stop"
    prompt_tokens = len(request.prompt_token_ids)
    return [
        TokenChunk(
            request_id=request.request_id,
            index=index,
            token_ids=[token_id],
            text=instant_token_text(token_id),
            usage=Usage(prompt_tokens, position * request.n + index + 1),
            finish_reason=reason if last else None,
            logprobs=_logprobs(token_id, request.logprobs),
        )
        for index in range(request.n)
    ]


def _logprobs(token_id: int, num_top: int | None) -> list[TokenLogprob] | None:
    """Certainty (logprob 0) for the emitted token, when logprobs were asked for."""
    if num_top is None:
        return None
    return [TokenLogprob(token_id, 0.0, [(token_id, 0.0)] if num_top else [])]


def instant_engine_factory(config: WorkerAppConfig) -> InstantEngine:
    """`LLMServer`'s engine factory for instant replicas (importable in any Ray worker).

    Reads from `config.environment_vars`: `MOESERVE_INSTANT_TOKENS` (tokens per choice),
    `MOESERVE_INSTANT_TOKEN_DELAY_S`, and, to test the serving path's failure handling,
    `MOESERVE_INSTANT_START_DELAY_S` (the replica takes this long to start, like a model
    loading) and `MOESERVE_INSTANT_FAIL_AFTER_TOKENS=k` (every request fails after k tokens
    per choice; 0: before the first).
    """
    env = config.environment_vars
    time.sleep(float(env.get(START_DELAY_ENV, "0")))
    return InstantEngine(
        tokens_per_choice=int(env.get(TOKENS_ENV, DEFAULT_TOKENS_PER_CHOICE)),
        token_delay_s=float(env.get(TOKEN_DELAY_ENV, DEFAULT_TOKEN_DELAY_S)),
        fail_after_tokens=int(env[FAIL_ENV]) if FAIL_ENV in env else None,
    )
