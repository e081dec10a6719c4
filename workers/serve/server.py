"""The replica: one engine per Ray Serve replica, many streams in flight.

`LLMServer` is a plain class (Ray Serve wraps it in `app.py`), so tests can construct it
directly, with a real engine or an injected one (any `ServingEngine`, e.g. the model-free
`workers.testing.instant.InstantEngine`). Its step loop runs in the background from the
first request; `generate` streams `TokenChunk`s; when the caller goes away (the handle's
stream is cancelled) the request is aborted and its KV blocks freed before the next step.
`complete` aggregates the stream here, so a non-streaming call costs one Ray round trip;
`embed` returns pooled hidden states (see `workers.engine.embedding`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import torch

from workers.engine.async_engine import AsyncEngine, torch_thread
from workers.engine.builder import build_engine, engine_over
from workers.engine.embedding import EmbeddingResult
from workers.engine.engine import LLMEngine
from workers.engine.request import Completion, GenerationRequest, TokenChunk, aggregate
from workers.model.loading import load_model
from workers.serve.config import WorkerAppConfig
from workers.serve.loopback import confine_replica_grpc_server
from workers.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


class ServingEngine(Protocol):
    """What the replica needs of an engine: `AsyncEngine` and `InstantEngine` provide it."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenChunk]: ...

    async def embed(self, inputs: list[list[int]]) -> EmbeddingResult: ...

    @property
    def num_in_flight(self) -> int: ...

    def stats(self) -> dict[str, int]: ...

    def check_health(self) -> None: ...

    async def drain(self, timeout_s: float) -> bool: ...

    async def close(self) -> None: ...


EngineFactory = Callable[[WorkerAppConfig], ServingEngine]


def build_async_engine(config: WorkerAppConfig) -> AsyncEngine:
    """Load the model (sharded over the replica's placement group when shards > 1) in the
    thread that will run every step (`torch_thread`)."""
    thread = torch_thread()
    core = thread.submit(_build_core_engine, config).result()
    return AsyncEngine(core, step_thread=thread)


def _build_core_engine(config: WorkerAppConfig) -> LLMEngine:
    if config.threads_per_shard:
        torch.set_num_threads(config.threads_per_shard)
    tokenizer = load_tokenizer(config.model.tokenizer_name())
    if config.shards == 1:
        model = load_model(config.model, config.device)
        return build_engine(model, config.engine, tokenizer=tokenizer)
    from workers.parallel.ray_executor import ShardedExecutor  # needs a Ray worker

    executor = ShardedExecutor(
        config.model,
        mode=config.parallel_mode,
        world_size=config.shards,
        device=config.device,
        num_blocks=config.engine.num_blocks,
        block_size=config.engine.block_size,
        cpus_per_rank=config.cpus_per_shard,
        threads_per_rank=config.threads_per_shard,
    )
    return engine_over(executor, config.model.args(), config.engine, tokenizer=tokenizer)


class LLMServer:
    def __init__(self, config: WorkerAppConfig, engine_factory: EngineFactory | None = None):
        confine_replica_grpc_server()  # before Serve starts that server, after this returns
        self.config = config
        self.engine: ServingEngine = (engine_factory or build_async_engine)(config)
        log.info("replica of %s ready", config.name)

    async def generate(
        self, request: GenerationRequest | dict[str, Any]
    ) -> AsyncIterator[TokenChunk]:
        """Stream a request's chunks (call through `handle.options(stream=True)`)."""
        async for chunk in self.engine.generate(_validated(request)):
            yield chunk

    async def complete(self, request: GenerationRequest | dict[str, Any]) -> Completion:
        """The whole answer in one reply; cancelling the call aborts the request."""
        return aggregate([chunk async for chunk in self.engine.generate(_validated(request))])

    async def embed(self, inputs: list[list[int]]) -> EmbeddingResult:
        """One pooled, unit-length vector per token list; ValueError says what to change."""
        return await self.engine.embed(inputs)

    async def stats(self) -> dict[str, int]:
        """Engine occupancy: in-flight requests and whatever else the engine counts (the
        model engine: KV blocks, preemptions, prefix-cache hits, steps)."""
        return self.engine.stats()

    async def check_health(self) -> None:
        """Raises when the engine's step loop died, so Serve replaces the replica."""
        self.engine.check_health()

    async def __del__(self) -> None:
        """Graceful drain: running requests finish (bounded), then ranks and memory go.

        Ray Serve awaits this once when it stops the replica (async `__del__` is its hook).
        """
        if not hasattr(self, "engine"):  # the constructor failed: nothing to release
            return
        drained = await self.engine.drain(self.config.graceful_shutdown_timeout_s)
        if not drained:
            log.warning("shutdown timeout: requests still running were aborted")
        await self.engine.close()


def _validated(request: GenerationRequest | dict[str, Any]) -> GenerationRequest:
    """A handle call may carry the request as a plain dict; validate it at the edge."""
    if isinstance(request, GenerationRequest):
        return request
    return GenerationRequest.model_validate(request)
