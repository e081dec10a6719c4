"""The engine behind a real Ray Serve deployment, called through a DeploymentHandle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any, Literal, cast

import pytest
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from tests.workers.engine.conftest import greedy, random_prompts, run_to_end, tokens_of
from workers.engine.builder import build_engine
from workers.engine.config import EngineConfig
from workers.engine.request import GenerationRequest, TokenChunk
from workers.model.loading import load_model
from workers.model.source import ModelSource
from workers.serve.app import build_app
from workers.serve.config import AutoscalingSettings, WorkerAppConfig

TINY = ModelSource(preset="dbrx-tiny", seed=5)
ENGINE = EngineConfig(block_size=8, kv_cache_tokens=8192)


@pytest.fixture(scope="module")
def handle(ray_cluster: None) -> Iterator[DeploymentHandle]:
    config = WorkerAppConfig(name="tiny", model=TINY, engine=ENGINE)
    yield serve.run(build_app(config), name="tiny", route_prefix=None)
    serve.delete("tiny")


def stream(
    handle: DeploymentHandle, request: GenerationRequest
) -> DeploymentResponseGenerator[Any]:
    return cast(
        DeploymentResponseGenerator[Any], handle.options(stream=True).generate.remote(request)
    )


def stats(handle: DeploymentHandle) -> dict[str, int]:
    result: dict[str, int] = handle.stats.remote().result()
    return result


def wait_until_idle(handle: DeploymentHandle, timeout_s: float = 10) -> dict[str, int]:
    """Stats once every KV block is free and no request is in flight (or at the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        current = stats(handle)
        idle = current["kv_blocks_free"] == current["kv_blocks_total"]
        if (idle and current["in_flight_requests"] == 0) or time.monotonic() > deadline:
            return current
        time.sleep(0.05)


def test_first_token_streams_before_a_200_token_generation_ends(
    handle: DeploymentHandle,
) -> None:
    request = greedy(random_prompts([12])[0], 200, "long")
    chunks: list[TokenChunk] = []
    in_flight_at_first_token = -1
    for chunk in stream(handle, request):
        if not chunks:
            in_flight_at_first_token = stats(handle)["in_flight_requests"]
        chunks.append(chunk)
    assert in_flight_at_first_token == 1  # the generation was still running
    assert len(tokens_of(chunks)) == 200
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 200 and chunks[-1].usage.prompt_tokens == 12


def test_cancelling_mid_stream_returns_kv_blocks_to_idle(handle: DeploymentHandle) -> None:
    idle = wait_until_idle(handle)
    assert idle["kv_blocks_free"] == idle["kv_blocks_total"]
    # 4000 tokens take far longer than the wait below: only cancellation frees the blocks.
    response = stream(handle, greedy(random_prompts([40], seed=1)[0], 4000, "cancel-me"))
    for received, _ in enumerate(response, start=1):
        if received == 5:
            assert stats(handle)["kv_blocks_free"] < idle["kv_blocks_free"]
            response.cancel()
            break
    after = wait_until_idle(handle)
    assert after["kv_blocks_free"] == idle["kv_blocks_free"]
    assert after["in_flight_requests"] == 0


def test_many_concurrent_streams_share_one_replica(handle: DeploymentHandle) -> None:
    prompts = random_prompts([5 + 3 * i for i in range(24)], seed=2)
    requests = [greedy(p, 10 + i, f"c{i}") for i, p in enumerate(prompts)]
    expected = run_to_end(build_engine(load_model(TINY), ENGINE), requests)

    async def consume(i: int) -> list[int]:
        tokens: list[int] = []
        async for chunk in stream(handle, requests[i]):
            tokens.extend(chunk.token_ids)
        return tokens

    async def run_all() -> list[list[int]]:
        return list(await asyncio.gather(*(consume(i) for i in range(len(requests)))))

    before = stats(handle)["steps"]
    results = asyncio.run(run_all())
    steps = stats(handle)["steps"] - before
    for i, tokens in enumerate(results):
        assert tokens == tokens_of(expected[f"c{i}"])
    # Batched: far fewer steps than the 24 * ~22 sequential decode steps.
    assert steps < sum(r.max_tokens or 0 for r in requests) / 4


def test_bad_requests_fail_with_the_reason(handle: DeploymentHandle) -> None:
    too_long = greedy([1, 2, 3], 10_000, "too-long")
    with pytest.raises(Exception, match="max_tokens <= 4093"):
        for _ in stream(handle, too_long):
            pass


@pytest.mark.parametrize("mode", ["tensor", "expert"])
def test_sharded_replica_through_serve_gives_the_same_greedy_tokens(
    ray_cluster: None, mode: Literal["tensor", "expert"]
) -> None:
    prompts = random_prompts([7, 19], seed=3)
    requests = [greedy(p, 12, f"s{i}") for i, p in enumerate(prompts)]
    expected = run_to_end(build_engine(load_model(TINY), ENGINE), requests)
    config = WorkerAppConfig(
        name=f"tiny-{mode}", model=TINY, engine=ENGINE, shards=2, parallel_mode=mode
    )
    handle = serve.run(build_app(config), name=config.name, route_prefix=None)
    try:
        for request in requests:
            chunks = list(stream(handle, request))
            assert tokens_of(chunks) == tokens_of(expected[request.request_id])
    finally:
        serve.delete(config.name)


def test_a_replica_scaled_to_zero_wakes_for_a_request(ray_cluster: None) -> None:
    config = WorkerAppConfig(
        name="tiny-zero",
        model=TINY,
        engine=ENGINE,
        num_replicas=None,
        autoscaling=AutoscalingSettings(
            min_replicas=0, max_replicas=1, upscale_delay_s=0, downscale_delay_s=600
        ),
    )
    handle = serve.run(build_app(config), name=config.name, route_prefix=None)
    try:
        deployment = serve.status().applications[config.name].deployments[config.name]
        assert deployment.replica_states == {}  # parked: no replica until a request comes
        chunks = list(stream(handle, greedy([1, 2, 3], 4, "wake")))
        assert len(tokens_of(chunks)) == 4
    finally:
        serve.delete(config.name)
