"""A 2-rank CPU replica on Ray (gloo): logits, greedy tokens and embeddings equal the
unsharded model's.

The probe actor stands where a Ray Serve replica stands: in bundle 0 of a 2-bundle
placement group, driving rank 0 in-process while rank 1 runs as an actor in bundle 1.
"""

from __future__ import annotations

from typing import Any

import pytest
import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from tests.workers.engine.conftest import greedy, random_prompts, run_to_end, tokens_of
from workers.engine.builder import build_engine, engine_over
from workers.engine.config import EngineConfig
from workers.engine.model_runner import LocalExecutor, StepInput
from workers.engine.paged_attention import SequenceChunk
from workers.model.loading import load_model
from workers.model.source import ModelSource

SOURCE = ModelSource(preset="dbrx-tiny", seed=3)
PROMPTS = random_prompts([11, 4, 23], seed=11)
CONFIG = EngineConfig(block_size=4, kv_cache_tokens=1024)


def prefill_step(prompt: list[int]) -> StepInput:
    blocks = list(range(-(-len(prompt) // CONFIG.block_size)))
    chunk = SequenceChunk(0, len(prompt), blocks)
    return StepInput(prompt, list(range(len(prompt))), [chunk], list(range(len(prompt))))


class ShardedProbe:
    def __init__(self, mode: str) -> None:
        from workers.parallel.ray_executor import ShardedExecutor

        self.executor = ShardedExecutor(
            SOURCE,
            mode=mode,  # type: ignore[arg-type]
            world_size=2,
            device="cpu",
            num_blocks=CONFIG.num_blocks,
            block_size=CONFIG.block_size,
        )

    def logits(self, prompt: list[int]) -> torch.Tensor:
        return self.executor.execute(prefill_step(prompt))

    def embed(self, prompt: list[int]) -> torch.Tensor:
        return self.executor.embed(prompt)

    def greedy_tokens(self, max_tokens: int) -> list[list[int]]:
        engine = engine_over(self.executor, SOURCE.args(), CONFIG)
        requests = [greedy(p, max_tokens, str(i)) for i, p in enumerate(PROMPTS)]
        chunks = run_to_end(engine, requests)
        return [tokens_of(chunks[str(i)]) for i in range(len(PROMPTS))]

    def shutdown(self) -> None:
        self.executor.shutdown()


@pytest.mark.parametrize("mode", ["tensor", "expert"])
def test_two_rank_replica_matches_the_unsharded_model(ray_cluster: None, mode: str) -> None:
    model = load_model(SOURCE)
    reference = build_engine(model, CONFIG)
    expected_tokens = [tokens_of(run_to_end(reference, [greedy(p, 16, "r")])["r"]) for p in PROMPTS]

    group = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK")
    ray.get(group.ready())
    probe_cls: Any = ray.remote(ShardedProbe)
    probe = probe_cls.options(
        num_cpus=1,
        scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement_group=group, placement_group_bundle_index=0
        ),
    ).remote(mode)
    try:
        for prompt in PROMPTS:
            sharded = ray.get(probe.logits.remote(prompt))
            full = model(torch.tensor([prompt]))[0]
            assert (sharded - full).abs().max().item() <= 1e-4
            sharded_vector = ray.get(probe.embed.remote(prompt))
            full_vector = LocalExecutor(model, num_blocks=1, block_size=1).embed(prompt)
            assert (sharded_vector - full_vector).abs().max().item() <= 1e-5
        assert ray.get(probe.greedy_tokens.remote(16)) == expected_tokens
        ray.get(probe.shutdown.remote())
    finally:
        ray.kill(probe)
        remove_placement_group(group)
