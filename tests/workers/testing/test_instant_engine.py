"""InstantEngine: the model-free engine's answers, usage, cancellation and drain."""

from __future__ import annotations

import asyncio
import math

import pytest

from workers.engine.async_engine import EngineDrainingError
from workers.engine.request import GenerationRequest, TokenChunk, Usage, aggregate
from workers.model.source import ModelSource
from workers.serve.config import WorkerAppConfig
from workers.serve.server import LLMServer
from workers.testing.instant import (
    TOKEN_DELAY_ENV,
    TOKENS_ENV,
    InstantEngine,
    instant_engine_factory,
)

pytestmark = pytest.mark.filterwarnings("ignore:coroutine 'LLMServer.__del__':RuntimeWarning")


def request(max_tokens: int | None = None, n: int = 1, **kw: object) -> GenerationRequest:
    return GenerationRequest.model_validate(
        {"prompt_token_ids": [1, 2, 3, 4, 5], "max_tokens": max_tokens, "n": n, **kw}
    )


async def collect(engine: InstantEngine, req: GenerationRequest) -> list[TokenChunk]:
    return [chunk async for chunk in engine.generate(req)]


@pytest.mark.parametrize(
    ("max_tokens", "emitted", "reason"),
    [(None, 4, "stop"), (2, 2, "length"), (4, 4, "length"), (10, 4, "stop")],
)
@pytest.mark.parametrize("n", [1, 3])
def test_each_choice_emits_up_to_the_limit_and_usage_counts_every_choice(
    max_tokens: int | None, emitted: int, reason: str, n: int
) -> None:
    chunks = asyncio.run(collect(InstantEngine(tokens_per_choice=4), request(max_tokens, n)))
    completion = aggregate(chunks)
    assert completion.usage == Usage(prompt_tokens=5, completion_tokens=n * emitted)
    assert [c.usage.completion_tokens for c in chunks] == list(range(1, n * emitted + 1))
    assert completion.finish_reasons == dict.fromkeys(range(n), reason)
    assert [c.finish_reason is not None for c in chunks].count(True) == n  # one per choice
    expected_ids = [1000 + i for i in range(emitted)]
    assert completion.token_ids == dict.fromkeys(range(n), expected_ids)
    assert completion.texts[0] == "".join(f" tok{t}" for t in expected_ids)
    assert completion.logprobs is None


def test_logprobs_are_reported_when_asked_for() -> None:
    chunks = asyncio.run(collect(InstantEngine(), request(2, logprobs=1)))
    logprobs = aggregate(chunks).logprobs
    assert logprobs is not None
    assert [(lp.token_id, lp.logprob, lp.top) for lp in logprobs[0]] == [
        (1000, 0.0, [(1000, 0.0)]),
        (1001, 0.0, [(1001, 0.0)]),
    ]


def test_closing_or_cancelling_a_stream_ends_the_request() -> None:
    engine = InstantEngine(tokens_per_choice=1000, token_delay_s=0.001)

    async def scenario() -> None:
        stream = engine.generate(request(request_id="closed"))
        assert (await anext(stream)).usage.completion_tokens == 1
        assert engine.num_in_flight == 1
        await stream.aclose()  # what a disconnecting client does
        task = asyncio.create_task(collect(engine, request(request_id="cancelled")))
        await asyncio.sleep(0.02)
        assert engine.num_in_flight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert engine.stats() == {
            "in_flight_requests": 0,
            "finished_requests": 0,
            "cancelled_requests": 2,
        }
        # The ids are free again, and the engine keeps serving.
        assert len(await collect(engine, request(2, request_id="closed"))) == 2

    asyncio.run(scenario())


def test_a_request_id_runs_once_at_a_time() -> None:
    engine = InstantEngine(token_delay_s=0.01)

    async def scenario() -> None:
        stream = engine.generate(request(request_id="dup"))
        await anext(stream)
        with pytest.raises(ValueError, match="already running"):
            await anext(engine.generate(request(request_id="dup")))
        await stream.aclose()

    asyncio.run(scenario())


def test_drain_refuses_new_requests_and_ends_streams_left_at_the_timeout() -> None:
    engine = InstantEngine(tokens_per_choice=1000, token_delay_s=0.005)

    async def scenario() -> None:
        stream = engine.generate(request())
        await anext(stream)
        assert await engine.drain(timeout_s=0.05) is False
        with pytest.raises(EngineDrainingError, match="shut down before the request finished"):
            async for _ in stream:
                pass
        with pytest.raises(EngineDrainingError, match="draining"):
            await anext(engine.generate(request()))
        with pytest.raises(EngineDrainingError, match="draining"):
            await engine.embed([[1]])

    asyncio.run(scenario())


def test_embeddings_are_unit_length_deterministic_and_checked() -> None:
    engine = InstantEngine(embedding_dim=16)

    async def scenario() -> None:
        result = await engine.embed([[1, 2], [1, 2], [2, 1]])
        assert result.usage == Usage(prompt_tokens=6, completion_tokens=0)
        assert all(len(v) == 16 for v in result.vectors)
        assert all(math.isclose(math.hypot(*v), 1.0) for v in result.vectors)
        assert result.vectors[0] == result.vectors[1] != result.vectors[2]
        with pytest.raises(ValueError, match="input 0 is empty"):
            await engine.embed([[]])
        with pytest.raises(ValueError, match="context is 4096 tokens"):
            await engine.embed([[1] * 4097])

    asyncio.run(scenario())


def test_the_factory_reads_its_settings_and_serves_a_replica() -> None:
    config = WorkerAppConfig(
        model=ModelSource(preset="dbrx-tiny"),
        environment_vars={TOKENS_ENV: "3", TOKEN_DELAY_ENV: "0.001"},
    )
    engine = instant_engine_factory(config)
    assert (engine.tokens_per_choice, engine.token_delay_s) == (3, 0.001)
    default = instant_engine_factory(WorkerAppConfig(model=ModelSource(preset="dbrx-tiny")))
    assert (default.tokens_per_choice, default.token_delay_s) == (4, 0.0)
    server = LLMServer(config, engine_factory=instant_engine_factory)

    async def scenario() -> None:
        completion = await server.complete(request(n=2).model_dump())
        assert completion.usage == Usage(prompt_tokens=5, completion_tokens=6)
        assert completion.texts == dict.fromkeys(range(2), " tok1000 tok1001 tok1002")
        assert (await server.embed([[3, 4]])).usage.prompt_tokens == 2
        assert (await server.stats())["finished_requests"] == 1
        await server.check_health()
        await server.__del__()
        with pytest.raises(EngineDrainingError):
            await server.complete(request())

    asyncio.run(scenario())
