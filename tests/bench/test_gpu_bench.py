"""bench/gpu.sh and bench/gpu_bench.py on a CPU with a tiny DBRX shape, so the one-shot GPU
benchmark cannot rot unnoticed between the rare runs on a GPU."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bench.gpu_bench import bench_model_args, main, parse_args
from bench.gpu_models import build_hf, build_random_on_device, moeserve_from_hf, resident_bytes
from workers.model.args import ModelArgs

REPO = Path(__file__).resolve().parents[2]
TINY = shlex.split(
    "--dtype fp32 --layers 1 --d-model 64 --n-heads 4 --n-kv-heads 2 --ffn 64 --experts 4 "
    "--top-k 2 --vocab 512 --prompt-len 8 --gen-len 4 --bandwidth-mb 16"
)
CPU = torch.device("cpu")


def _gpu_sh(out_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("needs bash")
    # one thread: a tiny model on a busy shared CPU otherwise spends seconds spin-waiting
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [bash, str(REPO / "bench" / "gpu.sh"), str(out_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        cwd=out_dir.parent,  # not the repo root: the script must find its own way
    )


@pytest.fixture
def keep_sigterm_handler() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def _tiny_args() -> ModelArgs:
    return bench_model_args(parse_args(["--device", "cpu", *TINY]))


def test_gpu_sh_runs_both_implementations_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _gpu_sh(out, "--device", "cpu", "--batch-sizes", "1", "3", *TINY)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "gpu_bench.json").read_text())
    assert report["status"] == "done" and report["errors"] == []
    assert report["environment"]["torch"] == torch.__version__
    assert report["config"]["model_args"]["d_model"] == 64
    assert report["weights"].startswith("identical")
    # fp32, same tensors: the two implementations must compute the same thing
    assert report["agreement"]["token_agreement"] == 1.0
    assert report["agreement"]["max_abs_logit_diff_over_max_logit"] < 1e-4
    assert [row["batch_size"] for row in report["rows"]] == [1, 3]
    for row in report["rows"]:
        assert row["moeserve_tokens_per_s"] > 0 and row["hf_tokens_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["moeserve_tokens_per_s"] / row["hf_tokens_per_s"])
        assert row["bandwidth_limit_tokens_per_s"] > row["moeserve_tokens_per_s"]
    table = (out / "gpu_bench.md").read_text()
    assert "| batch | moeserve tok/s | HF tok/s | ratio |" in table
    assert table in (out / "gpu_bench.log").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_gpu_sh_refuses_a_torch_without_cuda_before_measuring(tmp_path: Path) -> None:
    done = _gpu_sh(tmp_path / "out")
    assert done.returncode == 2
    assert "sees no CUDA device" in done.stdout + done.stderr
    assert not (tmp_path / "out" / "gpu_bench.json").exists()


def test_past_the_budget_measurements_are_skipped_and_reported(
    tmp_path: Path, keep_sigterm_handler: None
) -> None:
    argv = ["--device", "cpu", "--no-hf", "--budget-s", "1e-9", "--out-dir", str(tmp_path), *TINY]
    assert main(argv) == 1
    report = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert report["status"] == "done with errors"
    assert report["moeserve"] == [] and report["hf"] == []
    assert all("budget" in error["error"] for error in report["errors"])
    assert "| 1 | — | — | — |" in (tmp_path / "gpu_bench.md").read_text()


def test_moeserve_model_shares_hf_tensors_and_matches_its_logits() -> None:
    args = _tiny_args()
    hf = build_hf(args, CPU, torch.float32, seed=0)
    ours = moeserve_from_hf(hf, args)
    assert ours.output.weight.data_ptr() == hf.lm_head.weight.data_ptr()
    assert ours.block(0).moe.w2.data_ptr() == hf.transformer.blocks[0].ffn.experts.mlp.w2.data_ptr()
    ids = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.allclose(ours(ids), hf(ids).logits, atol=1e-5)


def test_random_build_is_seeded_and_allocated_in_the_requested_dtype() -> None:
    args = _tiny_args()
    a = build_random_on_device(args, CPU, torch.bfloat16, seed=1)
    b = build_random_on_device(args, CPU, torch.bfloat16, seed=1)
    c = build_random_on_device(args, CPU, torch.bfloat16, seed=2)
    assert all(p.dtype == torch.bfloat16 for p in a.parameters())
    assert torch.equal(a.block(0).moe.w13, b.block(0).moe.w13)
    assert not torch.equal(a.block(0).moe.w13, c.block(0).moe.w13)
    assert torch.equal(a.norm.weight, torch.ones_like(a.norm.weight))


def test_four_full_width_layers_fit_an_80_gb_gpu_with_the_hf_copy() -> None:
    args = bench_model_args(parse_args([]))
    assert args.d_model == 6144 and args.n_layers == 4 and args.ffn_hidden_size == 10752
    alone = resident_bytes(args, 2, with_hf=False)
    shared = resident_bytes(args, 2, with_hf=True)
    assert round(alone / 1e9, 1) == 28.5  # 14.27 B parameters in bf16
    assert round((shared - alone) / 1e9, 1) == 16.9  # moeserve's own packed w1|v1
    assert shared < 60e9
