"""Logits and greedy tokens match transformers' DBRX and Mixtral on saved checkpoints.

The comparison must hold on any CPU, so it never relies on fp32 rounding going one way:
- One forward over the prompts: our logits (plain and served paths) within `FLOOR` of
  transformers' uncached forward.
- Teacher-forced decoding: both models are fed the same tokens (transformers' greedy
  continuation), and at every step our cached-decode logits are within `bound` of
  transformers' cached-decode logits. `bound` is `FLOOR` plus twice transformers' own
  disagreement between its cached decode and its uncached forward over the same tokens,
  measured in the test: that is the fp32 noise of this shape on this CPU (it reached
  1.2e-3 on the DBRX shapes, where top-k routing amplifies rounding), and a bug in
  attention, routing or RoPE moves logits by orders of magnitude more.
- Greedy generation: our free-running tokens equal transformers' up to the first step
  whose reference top-2 margin is at most `2 * bound`. Beyond such a step a different but
  correct kernel may pick the other token, and the sequences may part; before it, logits
  within `bound` cannot pick differently, so a difference there is a bug.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.workers.hf_reference import RefShape, hf_greedy, save_hf
from workers.generation import generate
from workers.model.checkpoint import load_checkpoint
from workers.model.transformer import MoETransformer

SHAPES = [
    RefShape("dbrx", n_heads=4, n_kv_heads=4, n_experts=4, top_k=1, clip_qkv=0.3, norm_p=1.0),
    RefShape("dbrx", n_heads=8, n_kv_heads=2, n_experts=16, top_k=4, clip_qkv=100.0, norm_p=2.0),
    RefShape("dbrx", n_heads=4, n_kv_heads=1, n_experts=8, top_k=2, clip_qkv=0.8, norm_p=1.0),
    RefShape("dbrx", n_heads=4, n_kv_heads=2, n_experts=16, top_k=3, clip_qkv=2.0, norm_p=2.0),
    RefShape("mixtral", n_heads=4, n_kv_heads=4, n_experts=4, top_k=1),
    RefShape("mixtral", n_heads=8, n_kv_heads=2, n_experts=8, top_k=2),
    RefShape("mixtral", n_heads=4, n_kv_heads=2, n_experts=16, top_k=4),
]
NEW_TOKENS = 24
# fp32 noise of one forward of these 2-layer, 64-wide models (measured <= 4.3e-5 here).
FLOOR = 2e-4
# transformers' own cached-vs-uncached drift above this would make the test meaningless.
MAX_REFERENCE_DRIFT = 5e-3


@pytest.mark.parametrize("shape", SHAPES, ids=RefShape.label)
def test_logits_and_greedy_tokens_match_transformers(shape: RefShape, tmp_path: Path) -> None:
    reference = save_hf(shape, tmp_path)
    model = load_checkpoint(tmp_path)
    prompts = torch.randint(0, shape.vocab, (3, 17), generator=torch.Generator().manual_seed(1))

    with torch.no_grad():
        expected = reference(prompts).logits
    plain = model(prompts)  # autograd on: plain torch matmuls
    with torch.inference_mode():
        served = model(prompts)  # how generation and the engine run (packed weights on CPU)
    for actual in (plain, served):
        assert actual.shape == expected.shape
        assert (actual - expected).abs().max().item() <= FLOOR

    theirs, their_logits = hf_greedy(reference, prompts, NEW_TOKENS)  # [B, N, V], cached
    forced = torch.tensor(theirs)
    with torch.no_grad():  # transformers' uncached forward over the same tokens
        full = reference(torch.cat([prompts, forced], dim=1)).logits
    uncached = full[:, prompts.shape[1] - 1 : -1]
    drift = (uncached - their_logits).abs().max().item()
    assert drift <= MAX_REFERENCE_DRIFT, f"transformers disagrees with itself by {drift:.2e}"
    bound = FLOOR + 2 * drift

    ours_forced = teacher_forced_logits(model, prompts, forced)
    gap = (ours_forced - their_logits).abs().max().item()
    assert gap <= bound, f"teacher-forced logits differ by {gap:.2e} (bound {bound:.2e})"

    ours = generate(model, prompts, max_new_tokens=NEW_TOKENS).tokens
    for row, (our_row, their_row) in enumerate(zip(ours, theirs, strict=True)):
        assert_same_greedy_tokens(our_row, their_row, their_logits[row], tie=2 * bound)


@torch.inference_mode()
def teacher_forced_logits(
    model: MoETransformer, prompts: torch.Tensor, forced: torch.Tensor
) -> torch.Tensor:
    """Our cached decode (the loop `generate` runs) fed `forced` [B, N] instead of its own
    picks: the next-token logits [B, N, V] after the prompt and after each forced token."""
    cache = model.new_cache(prompts.shape[0], prompts.shape[1] + forced.shape[1])
    steps = [model(prompts, cache=cache, last_logits_only=True)[:, -1]]
    for i in range(forced.shape[1] - 1):
        steps.append(model(forced[:, i : i + 1], cache=cache)[:, -1])
    return torch.stack(steps, dim=1)


def assert_same_greedy_tokens(
    ours: list[int], theirs: list[int], logits: torch.Tensor, *, tie: float
) -> None:
    """Equal up to the first step where the reference's top-2 margin (`logits` [N, V]) is
    within `tie`; from that step on either pick is correct and the rows may part."""
    for step, (our_pick, their_pick) in enumerate(zip(ours, theirs, strict=True)):
        top2 = logits[step].topk(2).values
        if (top2[0] - top2[1]).item() <= tie:
            return
        assert our_pick == their_pick, f"step {step}: picked {our_pick}, transformers {their_pick}"


def test_routing_is_not_uniform_in_reference_weights(tmp_path: Path) -> None:
    """Guards the test setup itself: with default-width weights routing bugs would hide."""
    shape = SHAPES[1]
    save_hf(shape, tmp_path)
    model = load_checkpoint(tmp_path)
    x = model.tok_embeddings(torch.arange(64))
    weights, _ = model.block(0).moe.router(x)
    assert weights.max(dim=-1).values.mean() > 1.5 / shape.top_k
