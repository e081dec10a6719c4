"""Serving benchmark of the engine: a stream of random requests at fixed client concurrency.

`python -m workers.bench --engine ...` lands here. Each of `concurrency` clients sends its
next request as soon as its previous one finishes (a closed loop, like a load generator),
through `AsyncEngine.generate`, greedy with EOS off so every request makes exactly its
generation length. Reported: output tokens/s (tokens the requests asked for, over wall
time), time to first token and inter-token latency percentiles, and the same requests on
HF transformers `generate` in padded static batches (the pre-continuous-batching way to
serve), in the same process so machine noise hits both. A second, shared-prefix workload
(one system prompt, distinct questions) runs with prefix caching off and on.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from workers.engine.async_engine import AsyncEngine
from workers.engine.builder import build_engine
from workers.engine.config import EngineConfig
from workers.engine.request import GenerationRequest
from workers.model.transformer import MoETransformer


@dataclass(frozen=True)
class Workload:
    prompts: list[list[int]]
    gen_lens: list[int]

    @property
    def output_tokens(self) -> int:
        return sum(self.gen_lens)


def parse_range(text: str) -> tuple[int, int]:
    """'16:256' -> (16, 256); '64' -> (64, 64)."""
    low, _, high = text.partition(":")
    bounds = (int(low), int(high or low))
    if bounds[0] < 1 or bounds[0] > bounds[1]:
        raise ValueError(f"length range {text!r} must be LOW:HIGH with 1 <= LOW <= HIGH")
    return bounds


def random_workload(
    *,
    requests: int,
    prompt_len: tuple[int, int],
    gen_len: tuple[int, int],
    vocab: int,
    seed: int,
    shared_prefix: int = 0,
) -> Workload:
    generator = torch.Generator().manual_seed(seed)

    def lengths(bounds: tuple[int, int]) -> list[int]:
        return torch.randint(bounds[0], bounds[1] + 1, (requests,), generator=generator).tolist()

    prefix = torch.randint(0, vocab, (shared_prefix,), generator=generator).tolist()
    prompts = [
        prefix + torch.randint(0, vocab, (n,), generator=generator).tolist()
        for n in lengths(prompt_len)
    ]
    return Workload(prompts, lengths(gen_len))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@dataclass
class EngineRun:
    wall_s: float
    output_tokens: int
    ttft_s: list[float] = field(default_factory=list)
    itl_s: list[float] = field(default_factory=list)
    tokens: list[list[int]] = field(default_factory=list)
    steps: int = 0
    preemptions: int = 0
    prefix_hit_tokens: int = 0
    prompt_tokens: int = 0

    def summary(self) -> dict[str, Any]:
        ms = 1000.0
        return {
            "wall_s": self.wall_s,
            "output_tokens": self.output_tokens,
            "output_tokens_per_s": self.output_tokens / self.wall_s,
            "ttft_p50_ms": ms * percentile(self.ttft_s, 50),
            "ttft_p99_ms": ms * percentile(self.ttft_s, 99),
            "itl_p50_ms": ms * percentile(self.itl_s, 50),
            "itl_p99_ms": ms * percentile(self.itl_s, 99),
            "steps": self.steps,
            "preemptions": self.preemptions,
            "prefix_cache_hit_rate": self.prefix_hit_tokens / max(self.prompt_tokens, 1),
        }


def run_engine(
    model: MoETransformer,
    workload: Workload,
    *,
    concurrency: int,
    config: EngineConfig,
    step_thread: ThreadPoolExecutor,
) -> EngineRun:
    """`step_thread` must be the thread that loaded `model` (see `workers.engine.torch_thread`)."""
    core = step_thread.submit(build_engine, model, config).result()
    engine = AsyncEngine(core, step_thread=step_thread)
    ttft: list[float] = []
    itl: list[float] = []
    tokens: list[list[int]] = [[] for _ in workload.prompts]
    queue = list(range(len(workload.prompts)))

    async def client() -> None:
        while queue:
            index = queue.pop(0)
            request = GenerationRequest(
                request_id=f"bench-{index}",
                prompt_token_ids=workload.prompts[index],
                max_tokens=workload.gen_lens[index],
                temperature=0,
                ignore_eos=True,
            )
            sent = last = time.perf_counter()
            async for chunk in engine.generate(request):
                now = time.perf_counter()
                if tokens[index]:
                    itl.append(now - last)
                else:
                    ttft.append(now - sent)
                last = now
                tokens[index].extend(chunk.token_ids)

    async def main() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - start
        await engine.stop()
        return wall

    wall = asyncio.run(main())
    produced = sum(len(t) for t in tokens)
    assert produced == workload.output_tokens, "EOS is off: every request makes its length"
    return EngineRun(
        wall_s=wall,
        output_tokens=produced,
        ttft_s=ttft,
        itl_s=itl,
        tokens=tokens,
        steps=core.steps,
        preemptions=core.scheduler.num_preemptions,
        prefix_hit_tokens=core.block_manager.prefix_hits,
        prompt_tokens=core.block_manager.prefix_queries,
    )


def caching_gain(off: EngineRun, on: EngineRun) -> dict[str, float]:
    """How much prefix caching (`on`) improved the same workload over `off`."""
    before, after = off.summary(), on.summary()
    return {
        "throughput_gain": after["output_tokens_per_s"] / before["output_tokens_per_s"],
        "ttft_p50_gain": before["ttft_p50_ms"] / after["ttft_p50_ms"],
        "hit_rate": after["prefix_cache_hit_rate"],
    }
