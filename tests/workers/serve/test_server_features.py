"""LLMServer's unary methods without Ray: `embed` and `complete` on the real tiny model."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tests.workers.engine.conftest import greedy, random_prompts, run_to_end, tokens_of
from workers.engine.async_engine import AsyncEngine
from workers.engine.builder import build_engine
from workers.engine.config import EngineConfig
from workers.engine.engine import LLMEngine
from workers.engine.model_runner import StepInput
from workers.engine.request import GenerationRequest, Usage, aggregate
from workers.model.loading import load_model
from workers.model.source import ModelSource
from workers.model.transformer import MoETransformer
from workers.serve.config import WorkerAppConfig
from workers.serve.server import LLMServer
from workers.tokenizer import load_tokenizer

CONFIG = WorkerAppConfig(model=ModelSource(preset="dbrx-tiny"))


@pytest.fixture(scope="module")
def model() -> MoETransformer:
    return load_model(ModelSource(preset="dbrx-tiny"))


def core_engine(model: MoETransformer) -> LLMEngine:
    return build_engine(model, EngineConfig(), tokenizer=load_tokenizer("cl100k_base"))


def serve(core: LLMEngine) -> LLMServer:
    return LLMServer(CONFIG, engine_factory=lambda _: AsyncEngine(core))


def reference_embedding(model: MoETransformer, token_ids: list[int]) -> torch.Tensor:
    """The mean of what the final norm hands to the LM head, captured by a hook."""
    captured: list[torch.Tensor] = []
    hook = model.norm.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.inference_mode():
            model(torch.tensor([token_ids]))
    finally:
        hook.remove()
    return F.normalize(captured[0][0].float().mean(dim=0), dim=0)


def test_embeddings_are_unit_mean_pooled_final_hidden_states(model: MoETransformer) -> None:
    server = serve(core_engine(model))
    inputs = [[1, 2, 3], [1, 2, 3], [7, 8, 9, 10]]

    async def scenario() -> None:
        result = await server.embed(inputs)
        alone = await server.embed([inputs[2]])
        assert result.usage == Usage(prompt_tokens=10, completion_tokens=0)
        vectors = torch.tensor(result.vectors)
        assert vectors.shape == (3, model.args.d_model)
        assert torch.allclose(vectors.norm(dim=1), torch.ones(3), atol=1e-5)
        assert result.vectors[0] == result.vectors[1]  # same input, same vector
        assert float(vectors[0] @ vectors[2]) < 0.99  # different inputs differ
        assert alone.vectors[0] == result.vectors[2]  # independent of the other inputs
        for token_ids, vector in zip(inputs, vectors, strict=True):
            assert torch.allclose(vector, reference_embedding(model, token_ids), atol=1e-5)
        await server.__del__()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([], "send at least one text or token list"),
        ([[1], []], "input 1 is empty"),
        ([[1] * 4097], "input 0 has 4097 tokens; this model's context is 4096 tokens, so shorten"),
    ],
)
def test_bad_embedding_inputs_say_what_to_change(
    model: MoETransformer, inputs: list[list[int]], message: str
) -> None:
    server = serve(core_engine(model))
    with pytest.raises(ValueError, match=message):
        asyncio.run(server.embed(inputs))


def test_embeddings_run_between_steps_and_leave_running_generations_exact(
    model: MoETransformer,
) -> None:
    prompt = random_prompts([20], seed=5)[0]
    expected = tokens_of(run_to_end(core_engine(model), [greedy(prompt, 24, "g")])["g"])
    core = core_engine(model)
    server = serve(core)
    executor: Any = core.executor
    stepping = threading.Event()
    embed_threads: list[str] = []
    execute, embed = executor.execute, executor.embed

    def watched_execute(step: StepInput) -> torch.Tensor:
        stepping.set()
        try:
            return execute(step)
        finally:
            stepping.clear()

    def watched_embed(token_ids: list[int]) -> torch.Tensor:
        assert not stepping.is_set(), "an embedding ran during a step"
        embed_threads.append(threading.current_thread().name)
        return embed(token_ids)

    executor.execute, executor.embed = watched_execute, watched_embed

    async def embed_while_generating() -> list[bool]:
        overlapped = []
        for i in range(6):
            overlapped.append(core.has_unfinished())
            await server.embed([prompt[: 4 + i], prompt])
        return overlapped

    async def scenario() -> tuple[list[int], list[bool]]:
        stream = server.generate(greedy(prompt, 24, "g"))
        first = await anext(stream)  # the generation is running before the embeddings start
        overlapped, rest = await asyncio.gather(embed_while_generating(), _collect(stream, first))
        return rest, overlapped

    tokens, overlapped = asyncio.run(scenario())
    assert tokens == expected
    assert any(overlapped)
    assert len(embed_threads) == 12 and all(n.startswith("torch") for n in embed_threads)


async def _collect(stream: Any, first: Any) -> list[int]:
    return tokens_of([first] + [chunk async for chunk in stream])


@pytest.mark.parametrize(
    "request_",
    [
        greedy([5, 6, 7], 8, "greedy", logprobs=2),
        GenerationRequest(
            request_id="sampled",
            prompt_token_ids=[9, 10],
            max_tokens=5,
            n=2,
            seed=4,
            ignore_eos=True,
        ),
    ],
    ids=["greedy-with-logprobs", "two-seeded-choices"],
)
def test_complete_equals_the_aggregated_stream_including_usage(
    model: MoETransformer, request_: GenerationRequest
) -> None:
    server = serve(core_engine(model))

    async def scenario() -> None:
        chunks = [chunk async for chunk in server.generate(request_)]
        completion = await server.complete(request_.model_dump())  # as a handle may send it
        assert completion == aggregate(chunks)
        assert completion.request_id == request_.request_id
        assert sorted(completion.texts) == list(range(request_.n))
        for index in range(request_.n):
            assert completion.token_ids[index] == tokens_of(chunks, index)
            assert completion.texts[index] == "".join(c.text for c in chunks if c.index == index)
            assert completion.texts[index]  # the tokenizer turned the tokens into text
        max_tokens = request_.max_tokens or 0
        assert completion.usage.prompt_tokens == len(request_.prompt_token_ids)
        assert completion.usage.completion_tokens == sum(map(len, completion.token_ids.values()))
        assert completion.usage.completion_tokens <= request_.n * max_tokens
        if request_.logprobs is None:
            assert completion.logprobs is None
        else:
            assert completion.logprobs is not None
            assert [lp.token_id for lp in completion.logprobs[0]] == completion.token_ids[0]
            assert completion.finish_reasons == {0: "length"}
        stats = await server.stats()
        assert stats["in_flight_requests"] == 0 and stats["kv_blocks_free"] > 0
        await server.__del__()

    asyncio.run(scenario())


def test_aggregate_rejects_an_unfinished_stream(model: MoETransformer) -> None:
    server = serve(core_engine(model))

    async def scenario() -> None:
        chunks = [chunk async for chunk in server.generate(greedy([1, 2], 3, "r"))]
        with pytest.raises(ValueError, match=r"before choices \[0\] finished"):
            aggregate(chunks[:-1])
        with pytest.raises(ValueError, match="no chunks"):
            aggregate([])
        await server.__del__()

    asyncio.run(scenario())
