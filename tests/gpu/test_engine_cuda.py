"""The engine on CUDA: paged bf16 decoding against the static path, and streaming."""

from __future__ import annotations

import asyncio

import pytest
import torch

from tests.workers.engine.conftest import greedy, random_prompts, run_to_end, tokens_of
from workers.engine.async_engine import AsyncEngine
from workers.engine.builder import build_engine
from workers.engine.config import EngineConfig
from workers.generation import generate
from workers.model.loading import build_random
from workers.model.presets import preset

pytestmark = pytest.mark.gpu
ARGS = preset("dbrx-tiny").args.replace(d_model=256, n_heads=8, n_kv_heads=2, head_dim=32)


def test_paged_engine_on_cuda_matches_static_generation_fp32() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    model = build_random(ARGS, device="cuda", seed=4, std=0.05)
    prompts = random_prompts([5, 33, 70], seed=4)
    engine = build_engine(model, EngineConfig(block_size=16, max_num_batched_tokens=32))
    chunks = run_to_end(engine, [greedy(p, 10, str(i)) for i, p in enumerate(prompts)])
    for i, prompt in enumerate(prompts):
        ids = torch.tensor([prompt], device="cuda")
        assert tokens_of(chunks[str(i)]) == generate(model, ids, max_new_tokens=10).tokens[0]


def test_bf16_engine_streams_many_requests_and_frees_every_block() -> None:
    model = build_random(ARGS, device="cuda", dtype=torch.bfloat16, seed=5, std=0.05)
    core = build_engine(model, EngineConfig(block_size=16, kv_cache_tokens=2048))
    engine = AsyncEngine(core)
    requests = [greedy(p, 24, str(i)) for i, p in enumerate(random_prompts([20] * 48, seed=5))]

    async def run() -> list[int]:
        async def one(index: int) -> int:
            count = 0
            async for chunk in engine.generate(requests[index]):
                count += len(chunk.token_ids)
            return count

        counts = await asyncio.gather(*(one(i) for i in range(len(requests))))
        await engine.stop()
        return list(counts)

    assert asyncio.run(run()) == [24] * len(requests)
    assert core.block_manager.num_free_blocks == core.block_manager.num_blocks
