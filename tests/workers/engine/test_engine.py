"""The engine on the dbrx-tiny model: exact against static generation, batching-invariant,
paged, prefix-cached, preempting, with per-request sampling and stop handling."""

from __future__ import annotations

import pytest
import torch

from tests.workers.engine.conftest import (
    greedy,
    random_prompts,
    run_to_end,
    small_engine,
    tokens_of,
)
from workers.engine.builder import build_engine
from workers.engine.config import EngineConfig
from workers.engine.request import GenerationRequest
from workers.generation import generate
from workers.model.transformer import MoETransformer
from workers.tokenizer import Tokenizer


def reference(model: MoETransformer, prompt: list[int], max_tokens: int) -> list[int]:
    return generate(model, torch.tensor([prompt]), max_new_tokens=max_tokens).tokens[0]


def test_paged_chunked_generation_matches_static_generation(tiny_model: MoETransformer) -> None:
    # Block size 3 and a 16-token budget: prompts span blocks unevenly and prefill in chunks.
    engine = small_engine(tiny_model, block_size=3, max_num_batched_tokens=16)
    prompts = random_prompts([1, 7, 40, 16])
    chunks = run_to_end(engine, [greedy(p, 12, str(i)) for i, p in enumerate(prompts)])
    for i, prompt in enumerate(prompts):
        assert tokens_of(chunks[str(i)]) == reference(tiny_model, prompt, 12)
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_greedy_tokens_are_the_same_alone_and_among_31_others(
    tiny_model: MoETransformer,
) -> None:
    prompts = random_prompts([3 + 5 * i for i in range(32)], seed=1)
    target = greedy(prompts[0], 24, "target")
    alone = run_to_end(small_engine(tiny_model), [target])["target"]
    others = [greedy(p, 8 + i % 20, f"other-{i}") for i, p in enumerate(prompts[1:])]
    crowd = run_to_end(small_engine(tiny_model), [*others[:15], target, *others[15:]])
    assert tokens_of(crowd["target"]) == tokens_of(alone)
    assert len(tokens_of(alone)) == 24


def test_prefix_cache_reuses_a_shared_system_prompt_without_changing_output(
    tiny_model: MoETransformer,
) -> None:
    system = random_prompts([64], seed=2)[0]
    tails = random_prompts([5, 9, 3], seed=3)
    requests = [greedy(system + t, 6, str(i)) for i, t in enumerate(tails)]
    cached = small_engine(tiny_model, block_size=16)
    with_cache = {}
    for request in requests:  # one after another, so later ones find the prefix computed
        with_cache.update(run_to_end(cached, [request]))
    uncached = run_to_end(small_engine(tiny_model, prefix_caching=False), requests)
    for request in requests:
        rid = request.request_id
        assert tokens_of(with_cache[rid]) == tokens_of(uncached[rid])
    assert cached.block_manager.prefix_hits == 2 * 64  # the 2nd and 3rd reuse 4 blocks each


def test_preemption_under_a_small_cache_changes_nothing(tiny_model: MoETransformer) -> None:
    prompts = random_prompts([10 + i % 23 for i in range(40)], seed=4)
    requests = [greedy(p, 20, str(i)) for i, p in enumerate(prompts)]
    roomy = run_to_end(small_engine(tiny_model), requests)
    tight_engine = small_engine(tiny_model, block_size=4, kv_cache_tokens=256)
    tight = run_to_end(tight_engine, requests)
    assert tight_engine.scheduler.num_preemptions > 0
    assert tight_engine.block_manager.num_free_blocks == 64
    for request in requests:
        rid = request.request_id
        assert tokens_of(tight[rid]) == tokens_of(roomy[rid])
        assert tight[rid][-1].usage.completion_tokens == 20


def test_same_seed_same_tokens_different_seed_different_tokens(
    tiny_model: MoETransformer,
) -> None:
    prompt = random_prompts([6], seed=5)[0]

    def sampled(seed: int, rid: str) -> GenerationRequest:
        return GenerationRequest(
            request_id=rid, prompt_token_ids=prompt, max_tokens=16, seed=seed, ignore_eos=True
        )

    first = run_to_end(small_engine(tiny_model), [sampled(7, "a")])["a"]
    crowd = [greedy(p, 10, f"o{i}") for i, p in enumerate(random_prompts([4, 30, 12], seed=6))]
    again = run_to_end(small_engine(tiny_model), [*crowd, sampled(7, "b")])["b"]
    other = run_to_end(small_engine(tiny_model), [sampled(8, "c")])["c"]
    assert tokens_of(first) == tokens_of(again)
    assert tokens_of(first) != tokens_of(other)


def test_n_choices_are_independent_and_usage_counts_the_prompt_once(
    tiny_model: MoETransformer,
) -> None:
    prompt = random_prompts([9], seed=7)[0]
    request = GenerationRequest(
        request_id="n", prompt_token_ids=prompt, max_tokens=5, n=3, seed=1, ignore_eos=True
    )
    chunks = run_to_end(small_engine(tiny_model), [request])["n"]
    choices = [tokens_of(chunks, i) for i in range(3)]
    assert all(len(c) == 5 for c in choices) and len({tuple(c) for c in choices}) == 3
    assert chunks[-1].usage.prompt_tokens == 9 and chunks[-1].usage.completion_tokens == 15
    assert sorted(c.index for c in chunks if c.finish_reason == "length") == [0, 1, 2]


def test_stop_token_ends_the_choice_and_is_counted_but_not_returned(
    tiny_model: MoETransformer,
) -> None:
    prompt = random_prompts([8], seed=8)[0]
    expected = reference(tiny_model, prompt, 6)
    stop_at = next(i for i, t in enumerate(expected) if t not in expected[:i])
    request = greedy(prompt, 6, "s", stop_token_ids=[expected[stop_at]])
    chunks = run_to_end(small_engine(tiny_model), [request])["s"]
    assert tokens_of(chunks) == expected[:stop_at]
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage.completion_tokens == stop_at + 1


def test_stop_sequence_cuts_the_text_and_never_streams_it(
    tiny_model: MoETransformer, cl100k: Tokenizer
) -> None:
    engine = build_engine(tiny_model, EngineConfig(), tokenizer=cl100k)
    prompt = cl100k.encode("Once upon a time")
    full = run_to_end(engine, [greedy(prompt, 12, "full")])["full"]
    text = "".join(c.text for c in full)
    assert text == cl100k.decode(tokens_of(full))
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = run_to_end(engine, [greedy(prompt, 12, "cut", stop=[stop])])["cut"]
    streamed = "".join(c.text for c in cut)
    assert streamed == text[: text.index(stop)]
    assert cut[-1].finish_reason == "stop"


def test_top_logprobs_are_the_models_log_softmax(tiny_model: MoETransformer) -> None:
    prompt = random_prompts([5], seed=9)[0]
    chunks = run_to_end(small_engine(tiny_model), [greedy(prompt, 1, "lp", logprobs=3)])["lp"]
    (entry,) = chunks[0].logprobs or []
    expected = tiny_model(torch.tensor([prompt]))[0, -1].log_softmax(-1)
    values, ids = expected.topk(3)
    assert [t for t, _ in entry.top] == ids.tolist()
    assert entry.token_id == ids[0].item()
    assert entry.logprob == pytest.approx(values[0].item(), abs=1e-4)


def test_limits_are_checked_against_the_context_with_clear_errors(
    tiny_model: MoETransformer,
) -> None:
    engine = small_engine(tiny_model)
    context = tiny_model.args.max_seq_len
    with pytest.raises(ValueError, match=f"max_tokens <= {context - 10}"):
        engine.add_request(greedy([1] * 10, context, "big"))
    with pytest.raises(ValueError, match="shorten the prompt"):
        engine.add_request(greedy([1] * context, 1, "long"))
    small = small_engine(tiny_model, kv_cache_tokens=64)
    with pytest.raises(ValueError, match="KV cache of 64 tokens"):
        small.add_request(greedy([1] * 10, 100, "kv"))
    assert not engine.has_unfinished() and not small.has_unfinished()


def test_abort_frees_blocks_at_once_and_reports_usage_so_far(
    tiny_model: MoETransformer,
) -> None:
    engine = small_engine(tiny_model)
    engine.add_request(greedy([1, 2, 3], 50, "a"))
    for _ in range(4):
        engine.step()
    usage = engine.abort("a")
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (3, 4)
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    assert not engine.has_unfinished() and engine.abort("a") is None
