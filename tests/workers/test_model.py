"""The model itself: presets, the incremental decode path, and the MoE dispatch (every
expert kernel computes the same thing and never reads an expert no token chose)."""

from __future__ import annotations

import pytest
import torch

from workers.model.kernels import ChunkedLinear, grouped_experts, vocab_chunks
from workers.model.layers import attention_mask
from workers.model.loading import build_random, from_preset
from workers.model.moe import ExpertKernel, looped_experts
from workers.model.presets import preset

SMALL = preset("dbrx-tiny").args.replace(vocab_size=512)


def test_presets_are_deterministic_per_seed() -> None:
    ids = torch.randint(0, 1000, (1, 5))
    first, again = from_preset("dbrx-tiny", seed=7)(ids), from_preset("dbrx-tiny", seed=7)(ids)
    assert torch.equal(first, again)
    assert not torch.equal(first, from_preset("dbrx-tiny", seed=8)(ids))


def test_tiny_presets_use_the_cl100k_vocabulary() -> None:
    for name in ("dbrx-tiny", "mixtral-tiny"):
        assert preset(name).args.vocab_size == 100352


def test_real_shape_preset_points_to_load_checkpoint() -> None:
    with pytest.raises(ValueError, match="load_checkpoint"):
        from_preset("dbrx-instruct")


def test_real_dbrx_shape_has_published_parameter_counts() -> None:
    args = preset("dbrx-instruct").args
    assert round(args.parameter_count() / 1e9, 1) == 131.6
    assert round(args.active_parameter_count() / 1e9, 2) == 35.85
    assert args.kv_bytes_per_token(2) == 160 * 1024


def test_unknown_preset_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="dbrx-tiny"):
        from_preset("dbrx-huge")


@pytest.mark.parametrize("family", ["dbrx-tiny", "mixtral-tiny"])
def test_incremental_decode_matches_full_forward(family: str) -> None:
    model = build_random(preset(family).args.replace(vocab_size=512), seed=1, std=0.08)
    ids = torch.randint(0, 512, (3, 12))
    full = model(ids)
    cache = model.new_cache(3, 12)
    pieces = [model(ids[:, :5], cache=cache), model(ids[:, 5:9], cache=cache)]
    pieces += [model(ids[:, t : t + 1], cache=cache) for t in range(9, 12)]
    assert (torch.cat(pieces, dim=1) - full).abs().max().item() < 1e-5


def test_last_logits_only_returns_the_final_position() -> None:
    model = build_random(SMALL, seed=1)
    ids = torch.randint(0, 512, (2, 6))
    assert torch.allclose(model(ids, last_logits_only=True)[:, 0], model(ids)[:, -1], atol=1e-6)


def test_context_overflow_is_rejected_with_the_limit() -> None:
    model = build_random(SMALL.replace(max_seq_len=8), seed=1)
    with pytest.raises(ValueError, match="context of 8 tokens"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_grouped_and_looped_expert_kernels_agree() -> None:
    moe = build_random(SMALL, seed=2, std=0.08).block(0).moe
    x = torch.randn(37, SMALL.d_model)
    moe.experts = grouped_experts
    grouped = moe(x)
    moe.experts = looped_experts
    assert (grouped - moe(x)).abs().max().item() < 1e-5


@pytest.mark.parametrize("kernel", [grouped_experts, looped_experts])
def test_experts_no_token_chose_are_never_read(kernel: ExpertKernel) -> None:
    moe = build_random(SMALL, seed=2, std=0.08).block(0).moe
    moe.experts = kernel
    x = torch.randn(3, SMALL.d_model)
    _, chosen = moe.router(x)
    expected = moe(x)
    unused = sorted(set(range(SMALL.n_experts)) - set(chosen.flatten().tolist()))
    assert unused
    with torch.no_grad():
        moe.w13[unused] = float("nan")
        moe.w2[unused] = float("nan")
    assert torch.equal(moe(x), expected)


def test_sliding_window_mask_limits_lookback() -> None:
    mask = attention_mask(torch.tensor([[3, 4]]), key_count=5, sliding_window=2)
    assert mask[0, 0].tolist() == [
        [False, False, True, True, False],
        [False, False, False, True, True],
    ]


def test_invalid_args_are_explained() -> None:
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        SMALL.replace(n_kv_heads=3)


@pytest.mark.parametrize("rows", [1, 5, 64])
def test_chunked_lm_head_equals_one_matmul(rows: int) -> None:
    head = torch.nn.Linear(64, 100352, bias=False)
    x = torch.randn(2, rows, 64)
    assert vocab_chunks(100352) == 49 and vocab_chunks(512) == 1
    with torch.no_grad():
        assert torch.allclose(ChunkedLinear.of(head)(x), x @ head.weight.T, atol=1e-4)
