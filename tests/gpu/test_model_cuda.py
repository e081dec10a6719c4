"""The model on CUDA: bf16 against fp32, grouped-mm dispatch against the per-expert loop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from workers.generation import generate
from workers.model.checkpoint import load_checkpoint, save_checkpoint
from workers.model.kernels import grouped_experts
from workers.model.loading import build_random
from workers.model.moe import looped_experts
from workers.model.presets import preset

pytestmark = pytest.mark.gpu
ARGS = preset("dbrx-tiny").args.replace(d_model=256, n_heads=8, n_kv_heads=2, head_dim=32)


def test_cuda_fp32_matches_cpu(tmp_path: Path) -> None:
    save_checkpoint(build_random(ARGS, seed=1, std=0.05), tmp_path)
    cpu = load_checkpoint(tmp_path)
    gpu = load_checkpoint(tmp_path, device="cuda")
    ids = torch.randint(0, ARGS.vocab_size, (2, 33))
    torch.backends.cuda.matmul.allow_tf32 = False
    assert (gpu(ids.cuda()).cpu() - cpu(ids)).abs().max().item() < 1e-3


def test_bf16_grouped_and_looped_dispatch_agree() -> None:
    model = build_random(ARGS, device="cuda", dtype=torch.bfloat16, seed=2, std=0.05)
    moe = model.block(0).moe
    x = torch.randn(300, ARGS.d_model, device="cuda", dtype=torch.bfloat16)
    moe.experts = grouped_experts
    grouped = moe(x).float()
    moe.experts = looped_experts
    looped = moe(x).float()
    assert (grouped - looped).abs().max().item() < 5e-2 * looped.abs().max().item()


def test_bf16_greedy_generation_runs_and_stays_close_to_fp32() -> None:
    fp32 = build_random(ARGS, device="cuda", seed=3, std=0.05)
    bf16 = build_random(ARGS, device="cuda", dtype=torch.bfloat16, seed=3, std=0.05)
    prompts = torch.randint(0, ARGS.vocab_size, (4, 16), device="cuda")
    a = generate(fp32, prompts, max_new_tokens=8).tokens
    b = generate(bf16, prompts, max_new_tokens=8).tokens
    first_token_agreement = sum(x[0] == y[0] for x, y in zip(a, b, strict=True)) / len(a)
    assert first_token_agreement >= 0.5
