"""bench/gpu_bench.py's model builders and whole run on CUDA, at a tiny width."""

from __future__ import annotations

import copy
import json
import shlex
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bench.gpu_bench import bench_model_args, main, parse_args
from bench.gpu_models import build_hf, build_random_on_device, moeserve_from_hf
from workers.model.args import ModelArgs

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")
# 16 experts, top-4: DBRX's routing at a tiny width
SHAPE = shlex.split("--layers 2 --d-model 256 --n-heads 8 --n-kv-heads 2 --ffn 512 --vocab 1024")


def _args() -> ModelArgs:
    return bench_model_args(parse_args(SHAPE))


def _share_of_close_positions(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of [B, T] positions whose logits are within 5% of b's largest logit. Not all of
    them: bf16 router logits flip a near-tied top-k choice now and then, by design."""
    error = (a.float() - b.float()).abs().amax(dim=-1)
    return (error < 5e-2 * b.float().abs().max()).float().mean().item()


def _argmax_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.argmax(-1) == b.argmax(-1)).float().mean().item()


def test_random_device_build_in_bf16_tracks_fp32() -> None:
    fp32 = build_random_on_device(_args(), CUDA, torch.float32, seed=0, std=0.05)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    ids = torch.randint(0, 1024, (4, 24), device=CUDA)
    with torch.inference_mode():
        low, high = bf16(ids), fp32(ids)
    assert _share_of_close_positions(low, high) >= 0.75
    assert _argmax_agreement(low, high) >= 0.75


def test_shared_weight_model_matches_hf_in_bf16() -> None:
    args = _args()
    hf = build_hf(args, CUDA, torch.bfloat16, seed=0)
    ours = moeserve_from_hf(hf, args)
    assert ours.output.weight.data_ptr() == hf.lm_head.weight.data_ptr()
    ids = torch.randint(0, 1024, (4, 24), device=CUDA)
    with torch.inference_mode():
        mine, theirs = ours(ids), hf(ids).logits
    # HF's router softmax runs in bf16 and ours in fp32: a few routings differ
    assert _share_of_close_positions(mine, theirs) >= 0.75
    assert _argmax_agreement(mine, theirs) >= 0.75


@pytest.fixture
def keep_sigterm_handler() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_whole_run_on_cuda_reports_every_batch(tmp_path: Path, keep_sigterm_handler: None) -> None:
    argv = [*SHAPE, "--batch-sizes", "1", "4", "--prompt-len", "16", "--gen-len", "8"]
    assert main([*argv, "--out-dir", str(tmp_path), "--bandwidth-mb", "256"]) == 0
    report = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert report["status"] == "done"
    assert report["environment"]["gpu"]
    assert report["bandwidth"]["used_gb_per_s"] > 100
    for row in report["rows"]:
        assert row["moeserve_tokens_per_s"] > 0 and row["hf_tokens_per_s"] > 0
        assert 0 < row["percent_of_limit"] < 100
    assert all(m["peak_memory_gb"] > 0 for m in report["moeserve"])
