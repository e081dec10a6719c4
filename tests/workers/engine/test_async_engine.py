"""AsyncEngine: concurrent streams, cancellation, drain, failure — on the real tiny model."""

from __future__ import annotations

import asyncio

import pytest
import torch

from tests.workers.engine.conftest import (
    greedy,
    random_prompts,
    run_to_end,
    small_engine,
    tokens_of,
)
from workers.engine.async_engine import AsyncEngine, EngineDeadError, EngineDrainingError
from workers.engine.model_runner import StepInput
from workers.engine.request import GenerationRequest, TokenChunk
from workers.model.transformer import MoETransformer


async def collect(engine: AsyncEngine, request: GenerationRequest) -> list[TokenChunk]:
    return [chunk async for chunk in engine.generate(request)]


def test_200_concurrent_long_requests_on_a_tiny_cache_all_complete_exactly(
    tiny_model: MoETransformer,
) -> None:
    lengths = [24 + (7 * i) % 41 for i in range(200)]
    requests = [greedy(p, 40, f"r{i}") for i, p in enumerate(random_prompts(lengths, seed=20))]
    roomy = run_to_end(small_engine(tiny_model, max_num_seqs=128), requests)

    # 512 tokens of KV for 200 requests that each need up to 104: most must wait, and
    # running ones get preempted and recomputed when blocks run out.
    tight = small_engine(tiny_model, block_size=8, kv_cache_tokens=512)
    engine = AsyncEngine(tight)

    async def run_all() -> list[list[TokenChunk]]:
        results = await asyncio.gather(*(collect(engine, r) for r in requests))
        await engine.stop()
        return list(results)

    results = asyncio.run(run_all())
    assert tight.scheduler.num_preemptions > 0
    for request, chunks in zip(requests, results, strict=True):
        expected = tokens_of(roomy[request.request_id])
        assert tokens_of(chunks) == expected  # none lost, none repeated, same values
        assert [c.finish_reason for c in chunks].count("length") == 1
        assert chunks[-1].finish_reason == "length"
        assert chunks[-1].usage.completion_tokens == 40 == len(chunks)
    assert tight.block_manager.num_free_blocks == tight.block_manager.num_blocks


def test_closing_a_stream_aborts_the_request_and_frees_its_blocks(
    tiny_model: MoETransformer,
) -> None:
    core = small_engine(tiny_model)
    engine = AsyncEngine(core)

    async def scenario() -> None:
        stream = engine.generate(greedy([5, 6, 7, 8], 300, "gone"))
        received = [await anext(stream) for _ in range(3)]
        assert core.block_manager.num_free_blocks < core.block_manager.num_blocks
        await stream.aclose()  # what a disconnecting client does
        assert core.block_manager.num_free_blocks == core.block_manager.num_blocks
        usage = engine.cancelled_usage["gone"]
        assert usage.prompt_tokens == 4 and usage.completion_tokens >= len(received)
        assert engine.num_in_flight == 0
        # The engine keeps serving others.
        chunks = await collect(engine, greedy([1, 2], 3, "next"))
        assert len(tokens_of(chunks)) == 3
        await engine.stop()

    asyncio.run(scenario())


def test_invalid_requests_fail_before_they_are_queued(tiny_model: MoETransformer) -> None:
    engine = AsyncEngine(small_engine(tiny_model))

    async def scenario() -> None:
        with pytest.raises(ValueError, match="max_tokens <="):
            await collect(engine, greedy([1], 10**6, "huge"))
        assert engine.num_in_flight == 0

    asyncio.run(scenario())


def test_drain_finishes_running_requests_and_refuses_new_ones(
    tiny_model: MoETransformer,
) -> None:
    engine = AsyncEngine(small_engine(tiny_model))

    async def scenario() -> None:
        running = asyncio.create_task(collect(engine, greedy([3, 4], 20, "running")))
        await asyncio.sleep(0.05)
        drain = asyncio.create_task(engine.drain(timeout_s=30))
        await asyncio.sleep(0)
        with pytest.raises(EngineDrainingError):
            await collect(engine, greedy([1], 2, "late"))
        assert await drain
        assert len(tokens_of(await running)) == 20

    asyncio.run(scenario())


def test_drain_timeout_ends_running_streams_with_an_error(tiny_model: MoETransformer) -> None:
    """Past the drain timeout a running stream is told why it ends (it must not hang)."""
    engine = AsyncEngine(small_engine(tiny_model))

    async def scenario() -> None:
        running = asyncio.create_task(collect(engine, greedy([3, 4], 200, "long")))
        await asyncio.sleep(0.05)
        assert not await engine.drain(timeout_s=0)
        with pytest.raises(EngineDrainingError, match="shut down"):
            await asyncio.wait_for(running, timeout=10)

    asyncio.run(scenario())


class _BrokenExecutor:
    block_size = 4
    num_blocks = 64

    def execute(self, step: StepInput) -> torch.Tensor:
        raise RuntimeError("device lost")

    def embed(self, token_ids: list[int]) -> torch.Tensor:
        raise RuntimeError("device lost")

    def shutdown(self) -> None:
        pass


def test_a_failed_step_fails_requests_and_health_checks() -> None:
    from workers.engine.engine import LLMEngine

    engine = AsyncEngine(LLMEngine(_BrokenExecutor(), max_seq_len=128))

    async def scenario() -> None:
        with pytest.raises(EngineDeadError, match="device lost"):
            await collect(engine, greedy([1, 2], 4, "doomed"))
        with pytest.raises(EngineDeadError):
            engine.check_health()

    asyncio.run(scenario())


def test_close_releases_the_executor_on_the_torch_thread(tiny_model: MoETransformer) -> None:
    import threading

    from workers.engine.builder import engine_over
    from workers.engine.config import EngineConfig
    from workers.engine.model_runner import LocalExecutor

    released_on: list[str] = []

    class RecordingExecutor(LocalExecutor):
        def shutdown(self) -> None:
            released_on.append(threading.current_thread().name)

    config = EngineConfig(kv_cache_tokens=256)
    executor = RecordingExecutor(tiny_model, num_blocks=config.num_blocks, block_size=16)
    engine = AsyncEngine(engine_over(executor, tiny_model.args, config))

    async def scenario() -> None:
        assert len(tokens_of(await collect(engine, greedy([1, 2], 3, "x")))) == 3
        await engine.close()

    asyncio.run(scenario())
    assert len(released_on) == 1 and released_on[0].startswith("torch")
