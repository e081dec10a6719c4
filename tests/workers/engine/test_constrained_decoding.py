"""Constrained decoding on the dbrx-tiny model (random weights): every output follows its
grammar, free rows of the same batch are untouched, bad grammars are refused up front."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import torch

from tests.workers.engine.conftest import greedy, random_prompts, run_to_end, tokens_of
from workers.engine import engine as engine_module
from workers.engine.async_engine import AsyncEngine
from workers.engine.builder import build_engine
from workers.engine.config import EngineConfig
from workers.engine.constraint import Constraint, ConstraintKind
from workers.engine.engine import LLMEngine
from workers.engine.grammar import apply_token_bitmask
from workers.engine.request import GenerationRequest, TokenChunk
from workers.model.transformer import MoETransformer
from workers.tokenizer import Tokenizer, load_tokenizer

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "score": {"type": "integer", "minimum": 0, "maximum": 100},
        "color": {"enum": ["red", "green", "blue"]},
        "active": {"type": "boolean"},
        "tags": {"type": "array", "maxItems": 3, "items": {"enum": ["x", "y", "z"]}},
    },
    "required": ["name", "score", "color", "active", "tags"],
    "additionalProperties": False,
}
YES_NO = Constraint(kind=ConstraintKind.LARK, source='start: "yes" | "no"')


@pytest.fixture(scope="module")
def engine(tiny_model: MoETransformer, cl100k: Tokenizer) -> LLMEngine:
    """One engine for the module: its vocabulary index is built once."""
    return build_engine(tiny_model, EngineConfig(), tokenizer=cl100k)


def text_of(chunks: list[TokenChunk], index: int = 0) -> str:
    return "".join(c.text for c in chunks if c.index == index)


def constrained(prompt: list[int], request_id: str, **kw: Any) -> GenerationRequest:
    fields: dict[str, Any] = {"constraint": Constraint.json_schema(SCHEMA), "max_tokens": 120}
    return GenerationRequest(request_id=request_id, prompt_token_ids=prompt, **(fields | kw))


def assert_untouched(engine: LLMEngine) -> None:
    assert not engine.has_unfinished() and not engine.scheduler.waiting
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_twenty_sampled_outputs_all_validate_against_the_schema(
    engine: LLMEngine, cl100k: Tokenizer
) -> None:
    prompt = cl100k.encode("Describe a user as JSON:")
    requests = [constrained(prompt, f"s{seed}", seed=seed, temperature=1.0) for seed in range(20)]
    chunks = run_to_end(engine, requests)
    outputs = set()
    for request in requests:
        stream = chunks[request.request_id]
        text = text_of(stream)
        jsonschema.validate(json.loads(text), SCHEMA)
        assert stream[-1].finish_reason == "stop"
        assert text == cl100k.decode(tokens_of(stream))  # the last token's text is streamed
        outputs.add(text)
    assert len(outputs) > 10  # the seeds really sampled different documents
    assert_untouched(engine)


def test_masks_do_not_leak_into_a_free_request_of_the_same_batch(
    engine: LLMEngine, tiny_model: MoETransformer, cl100k: Tokenizer
) -> None:
    free_prompt, json_prompt = random_prompts([7, 11], seed=30)
    free = greedy(free_prompt, 24, "free")
    alone = run_to_end(build_engine(tiny_model), [free])["free"]
    both = run_to_end(engine, [constrained(json_prompt, "json", temperature=0), free])
    assert tokens_of(both["free"]) == tokens_of(alone)
    jsonschema.validate(json.loads(text_of(both["json"])), SCHEMA)


def test_n_choices_each_follow_the_grammar(engine: LLMEngine, cl100k: Tokenizer) -> None:
    prompt = cl100k.encode("Answer:")
    request = GenerationRequest(
        request_id="n", prompt_token_ids=prompt, max_tokens=8, n=4, seed=3, constraint=YES_NO
    )
    chunks = run_to_end(engine, [request])["n"]
    for index in range(4):
        assert text_of(chunks, index) in {"yes", "no"}
    assert sorted(c.index for c in chunks if c.finish_reason == "stop") == [0, 1, 2, 3]


@pytest.mark.parametrize("seed", [None, 1, 2, 3])
def test_a_lark_grammar_gives_exactly_one_of_its_words(
    engine: LLMEngine, cl100k: Tokenizer, seed: int | None
) -> None:
    prompt = cl100k.encode("Is the sky green? Say yes or no:")
    sampling: dict[str, Any] = {"temperature": 0} if seed is None else {"seed": seed}
    request = GenerationRequest(
        request_id="yn", prompt_token_ids=prompt, max_tokens=16, constraint=YES_NO, **sampling
    )
    chunks = run_to_end(engine, [request])["yn"]
    assert text_of(chunks) in {"yes", "no"}
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage.completion_tokens == len(tokens_of(chunks)) <= 3


def test_ignore_eos_still_ends_a_complete_grammar(engine: LLMEngine, cl100k: Tokenizer) -> None:
    request = GenerationRequest(
        request_id="eos",
        prompt_token_ids=cl100k.encode("Pick:"),
        max_tokens=16,
        ignore_eos=True,
        constraint=Constraint(kind=ConstraintKind.LARK, source='start: "a" | "a" "b"'),
        temperature=0,
    )
    chunks = run_to_end(engine, [request])["eos"]
    assert text_of(chunks) in {"a", "ab"}  # after "a" the grammar allows eos; it is no text
    assert chunks[-1].finish_reason == "stop"


def test_an_uncompilable_schema_is_refused_before_anything_is_queued(
    engine: LLMEngine, tiny_model: MoETransformer
) -> None:
    bad = constrained([1, 2, 3], "bad", constraint=Constraint.json_schema({"type": "strin"}))
    with pytest.raises(ValueError, match="does not compile: Invalid type: strin"):
        engine.validate(bad)
    with pytest.raises(ValueError, match="Invalid type: strin"):
        engine.add_request(bad)
    lark = constrained([1], "lark", constraint=Constraint(kind=ConstraintKind.LARK, source="x"))
    with pytest.raises(ValueError, match="lark constraint does not compile"):
        engine.add_request(lark)
    assert_untouched(engine)
    no_tokenizer = build_engine(tiny_model)
    with pytest.raises(ValueError, match="no tokenizer"):
        no_tokenizer.add_request(constrained([1, 2, 3], "nt"))
    assert_untouched(no_tokenizer)


def test_the_async_engine_refuses_a_bad_schema_like_a_token_limit(engine: LLMEngine) -> None:
    async_engine = AsyncEngine(engine)
    bad = constrained([1, 2, 3], "bad", constraint=Constraint.json_schema({"type": "strin"}))

    async def consume() -> None:
        async for _ in async_engine.generate(bad):
            pass

    with pytest.raises(ValueError, match="Invalid type: strin"):
        asyncio.run(consume())
    assert async_engine.num_in_flight == 0
    assert_untouched(engine)


def test_the_async_engine_streams_a_constrained_request(
    engine: LLMEngine, cl100k: Tokenizer
) -> None:
    async_engine = AsyncEngine(engine)
    request = constrained(cl100k.encode("JSON:"), "async", temperature=0)

    async def consume() -> list[TokenChunk]:
        chunks = [chunk async for chunk in async_engine.generate(request)]
        await async_engine.stop()
        return chunks

    chunks = asyncio.run(consume())
    jsonschema.validate(json.loads(text_of(chunks)), SCHEMA)
    assert chunks[-1].finish_reason == "stop"


def test_masks_are_filled_on_their_own_thread_started_before_the_forward_pass(
    engine: LLMEngine, cl100k: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    execute, fill = engine.executor.execute, engine.grammar._fill

    def recording_execute(step: Any) -> torch.Tensor:
        events.append("execute")
        return execute(step)

    def recording_fill(*args: Any) -> torch.Tensor:
        events.append(f"fill on {threading.current_thread().name}")
        return fill(*args)

    def recording_submit(*args: Any) -> Any:
        events.append("submit")
        return submit(*args)

    submit = engine.grammar.submit_masks
    monkeypatch.setattr(engine.executor, "execute", recording_execute)
    monkeypatch.setattr(engine.grammar, "_fill", recording_fill)
    monkeypatch.setattr(engine.grammar, "submit_masks", recording_submit)
    run_to_end(engine, [constrained(cl100k.encode("Pick:"), "t", constraint=YES_NO)])
    fills = [e for e in events if e.startswith("fill")]
    steps = [e for e in events if not e.startswith("fill")]
    assert steps == ["submit", "execute"] * len(fills)  # every step: masks first, then model
    assert all(e == "fill on grammar-mask_0" for e in fills)


def test_logprobs_of_a_constrained_row_name_only_allowed_tokens(
    engine: LLMEngine, cl100k: Tokenizer
) -> None:
    allowed = {cl100k.encode(word)[0] for word in ("y", "ye", "yes", "n", "no")}
    request = GenerationRequest(
        request_id="lp",
        prompt_token_ids=cl100k.encode("Yes or no?"),
        max_tokens=4,
        temperature=0,
        logprobs=20,
        constraint=YES_NO,
    )
    chunks = run_to_end(engine, [request])["lp"]
    first = (chunks[0].logprobs or [])[0]
    assert {token for token, _ in first.top} == allowed  # 20 asked for, only 5 exist
    assert first.token_id in allowed
    assert math.fsum(math.exp(value) for _, value in first.top) == pytest.approx(1.0, abs=1e-5)
    for chunk in chunks:
        for entry in chunk.logprobs or []:
            assert all(math.isfinite(value) for _, value in entry.top)


def test_preemption_keeps_each_grammar_in_step(
    tiny_model: MoETransformer, cl100k: Tokenizer
) -> None:
    prompts = random_prompts([20 + 3 * i for i in range(8)], seed=31)
    requests = [constrained(p, str(i), temperature=0) for i, p in enumerate(prompts)]
    roomy = run_to_end(build_engine(tiny_model, EngineConfig(), tokenizer=cl100k), requests)
    config = EngineConfig(block_size=4, kv_cache_tokens=256)
    tight_engine = build_engine(tiny_model, config, tokenizer=cl100k)
    tight = run_to_end(tight_engine, requests)
    assert tight_engine.scheduler.num_preemptions > 0
    for request in requests:
        rid = request.request_id
        assert tokens_of(tight[rid]) == tokens_of(roomy[rid])
        jsonschema.validate(json.loads(text_of(tight[rid])), SCHEMA)


def test_a_token_the_grammar_refuses_finishes_the_choice_without_failing_the_step(
    engine: LLMEngine,
    cl100k: Tokenizer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def unmasked(logits: torch.Tensor, states: list[Any], bitmask: Any = None) -> Any:
        return sample(logits, states)  # as if the mask had been lost

    sample = engine_module.sample
    monkeypatch.setattr(engine_module, "sample", unmasked)
    prompt = cl100k.encode("Yes or no?")
    refused = GenerationRequest(
        request_id="r", prompt_token_ids=prompt, max_tokens=4, temperature=0, constraint=YES_NO
    )
    free = greedy(prompt, 4, "free")
    with caplog.at_level(logging.WARNING, logger="workers.engine.engine"):
        chunks = run_to_end(engine, [refused, free])
    assert chunks["r"][-1].finish_reason == "stop" and len(tokens_of(chunks["r"])) == 1
    assert chunks["free"][-1].finish_reason == "length"
    assert "request r choice 0: the grammar refused token" in caplog.text
    assert_untouched(engine)


def test_a_hugging_face_tokenizer_narrower_than_the_logits(
    tiny_model: MoETransformer, tmp_path: Path
) -> None:
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    raw = RawTokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    raw.train_from_iterator(['{"name": "red", "score": 12, "active": true}'] * 3, trainer=trainer)
    raw.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 2, "bos_token_id": 1}))
    tokenizer = load_tokenizer(str(tmp_path))
    engine = build_engine(tiny_model, EngineConfig(), tokenizer=tokenizer)
    requests = [constrained(tokenizer.encode("json:"), str(s), seed=s) for s in range(4)]
    for chunks in run_to_end(engine, requests).values():
        jsonschema.validate(json.loads(text_of(chunks)), SCHEMA)
        assert max(tokens_of(chunks)) < tokenizer.vocab_size  # never a padding row


def test_the_bitmask_matches_llguidances_own_application() -> None:
    import llguidance.numpy

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 100, generator=generator)
    bitmask = torch.randint(-(2**31), 2**31 - 1, (4, 4), dtype=torch.int32, generator=generator)
    bitmask[1] = -1  # a free row: untouched
    bitmask[2] = 0  # allows nothing (a matcher in error): left alone, the matcher refuses
    expected = logits.numpy().copy()
    llguidance.numpy.apply_token_bitmask_inplace(expected, bitmask.numpy())
    expected[2] = logits[2].numpy()
    before = logits.clone()
    apply_token_bitmask(logits, bitmask)
    assert np.array_equal(logits.numpy(), expected)
    assert torch.equal(logits[1], before[1])
    wide = before.clone()[:, :100]
    narrow_mask = bitmask[:, :3]  # covers 96 tokens: the rest of a constrained row is banned
    apply_token_bitmask(wide, narrow_mask)
    assert torch.isinf(wide[0, 96:]).all() and torch.equal(wide[1], before[1])
