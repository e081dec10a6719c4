"""One-GPU benchmark: moeserve against Hugging Face transformers on a full-width DBRX slice.

    bash bench/gpu.sh [OUT_DIR] [ARGS...]     # the wrapper: checks, a hard time limit, a log
    python -m bench.gpu_bench --out-dir DIR   # the same, without the wrapper (from the repo root)

The model is DBRX at full width (d_model 6144, 48 query / 8 kv heads of 128, 16 experts of
10752, top-4, clip_qkv 8, vocab 100352) and reduced depth (`--layers`, default 4: 14.3 B
parameters, 28.5 GB in bf16). Every layer is a real DBRX layer, so kernel shapes, routing and
bytes per layer are DBRX's; only the number of layers differs.

Weights, and why this way. HF's `DbrxForCausalLM` is built first, directly on the GPU with its
own seeded init, and moeserve's model is assembled from HF's tensors by `hf_to_internal`, the
renaming `load_checkpoint` uses. Every tensor except the packed w1|v1 (`w13`) is shared, so
both models hold identical weights in ≈1.6× the memory of one (4 layers: 28.5 + 16.9 GB) and
the greedy-agreement check means something. The alternatives cost minutes of the 8: the
preset path (`build_random`) draws 14 B samples in fp32 on the CPU, and a checkpoint written
to disk and read back twice moves 28.5 GB each way. Without transformers, or if building it
fails, moeserve's model gets seeded random weights drawn on the GPU and the HF columns say why
they are empty: the run still yields moeserve's numbers and the ceiling.

Measured per batch size (default 1, 8, 64; prompt 128 tokens, 64 new, the same random
prompts for both): output tokens/s = generated tokens ÷ wall seconds, prefill included,
after a warm-up run. moeserve runs `workers.bench.run_benchmark` (static batch, KV cache,
CUDA synced per step); HF runs `generate` (greedy, EOS off, SDPA attention). The ceiling is
`workers.roofline`'s bytes per decode step over the best HBM bandwidth measured here (a
matrix-vector product or a device copy, whichever is faster), so "% of limit" never flatters.
OUT_DIR/gpu_bench.json is rewritten after every step: a run cut short keeps what it measured.

`--device cpu` with a tiny shape (`--d-model 64 --vocab 512 ...`) runs the same code on a CPU;
tests/bench/test_gpu_bench.py does exactly that, so this script cannot rot unnoticed.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from bench.gpu_models import build_hf, build_random_on_device, moeserve_from_hf, resident_bytes
from bench.gpu_report import Report, environment, markdown_table, table_rows
from workers.bench import run_benchmark
from workers.generation import generate
from workers.model.args import ModelArgs
from workers.model.presets import preset
from workers.model.transformer import MoETransformer
from workers.roofline import measure_memory_bandwidth

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
GB = 1e9
HEADROOM = 8 * 10**9  # KV caches, prefill activations, HF's fp32 logits, allocator slack


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out-dir", type=Path, default=Path(os.environ.get("OUT") or "bench/out"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--layers", type=int, default=4, help="DBRX has 40; 4 fit twice on 80 GB")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen-len", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-hf", action="store_true", help="measure moeserve alone")
    parser.add_argument(
        "--budget-s", type=float, default=400, help="start no measurement after this many seconds"
    )
    parser.add_argument(
        "--bandwidth-mb", type=int, help="bandwidth probe size (default 4096 on CUDA, else 64)"
    )
    shape = parser.add_argument_group("shape overrides, for smoke runs (default: DBRX's)")
    for flag in ("--d-model", "--n-heads", "--n-kv-heads", "--ffn", "--experts", "--top-k"):
        shape.add_argument(flag, type=int)
    shape.add_argument("--vocab", type=int)
    args = parser.parse_args(argv)
    positive = ("layers", "prompt_len", "gen_len", "budget_s")
    if any(getattr(args, name) <= 0 for name in positive) or min(args.batch_sizes) <= 0:
        parser.error("--layers, --batch-sizes, --prompt-len, --gen-len, --budget-s must be > 0")
    return args


def bench_model_args(ns: argparse.Namespace) -> ModelArgs:
    """DBRX-instruct's shape with `--layers` layers and any smoke-run overrides."""
    real = preset("dbrx-instruct").args
    d_model, n_heads = ns.d_model or real.d_model, ns.n_heads or real.n_heads
    if d_model % n_heads:
        raise ValueError(f"--d-model ({d_model}) must be a multiple of --n-heads ({n_heads})")
    vocab = ns.vocab or real.vocab_size
    eos = real.eos_token_id if real.eos_token_id is not None and real.eos_token_id < vocab else None
    return real.replace(
        n_layers=ns.layers,
        d_model=d_model,
        n_heads=n_heads,
        head_dim=d_model // n_heads,  # DBRX's config has no head_dim of its own
        n_kv_heads=ns.n_kv_heads or real.n_kv_heads,
        ffn_hidden_size=ns.ffn or real.ffn_hidden_size,
        n_experts=ns.experts or real.n_experts,
        top_k=ns.top_k or real.top_k,
        vocab_size=vocab,
        bos_token_id=eos,
        eos_token_id=eos,
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, megabytes: int, repeats: int = 5) -> float:
    """Bytes read plus bytes written per second by a device-to-device copy, best of `repeats`."""
    source = torch.ones(megabytes * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        target.copy_(source)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * source.numel() / best


def random_prompts(vocab: int, batch_size: int, prompt_len: int, seed: int) -> torch.Tensor:
    """The prompts `run_benchmark(..., seed=seed)` draws, so both implementations get the same."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch_size, prompt_len), generator=generator)


def hf_generate(model: Any, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    with torch.inference_mode():
        out: torch.Tensor = model.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[:, prompts.shape[1] :]


def hf_benchmark(
    model: Any, device: torch.device, *, batch_size: int, prompt_len: int, gen_len: int, seed: int
) -> dict[str, Any]:
    prompts = random_prompts(model.config.vocab_size, batch_size, prompt_len, seed).to(device)
    hf_generate(model, prompts, min(gen_len, 4))  # warm-up
    sync(device)
    start = time.perf_counter()
    generated = hf_generate(model, prompts, gen_len)
    sync(device)
    wall = time.perf_counter() - start
    assert generated.shape == (batch_size, gen_len), "min_new_tokens pins the length"
    return {
        "batch_size": batch_size,
        "wall_s": wall,
        "output_tokens_per_s": generated.numel() / wall,
    }


def greedy_agreement(hf: Any, ours: MoETransformer, device: torch.device) -> dict[str, Any]:
    """Same weights, same prompts: how often both pick the same greedy token, and how far apart
    the logits are (bf16 and HF's bf16 router softmax make some disagreement normal)."""
    prompts = random_prompts(ours.args.vocab_size, 4, 32, seed=12345)
    theirs = hf_generate(hf, prompts.to(device), 16).cpu()
    mine = torch.tensor(generate(ours, prompts, max_new_tokens=16).tokens)
    with torch.inference_mode():
        our_logits = ours(prompts.to(device)).float()
        hf_logits = hf(prompts.to(device)).logits.float()
    scale = hf_logits.abs().max().item()
    return {
        "token_agreement": (mine == theirs).float().mean().item(),
        "first_token_agreement": (mine[:, 0] == theirs[:, 0]).float().mean().item(),
        "max_abs_logit_diff_over_max_logit": (our_logits - hf_logits).abs().max().item() / scale,
        "logits_finite": bool(torch.isfinite(our_logits).all().item()),
    }


def build_models(
    ns: argparse.Namespace, args: ModelArgs, device: torch.device, report: Report
) -> tuple[MoETransformer, Any]:
    """(moeserve's model, HF's model or None). Failures are recorded, never fatal: a one-shot
    run should still bring back moeserve's numbers."""
    dtype = DTYPES[ns.dtype]
    hf: Any = None
    if ns.no_hf:
        report.data["hf_error"] = "skipped: --no-hf"
    else:
        billions = args.parameter_count() / 1e9
        report.log(f"building HF DbrxForCausalLM on {device} ({billions:.2f} B parameters)")
        try:
            hf = build_hf(args, device, dtype, ns.seed)
        except Exception as exc:
            report.error("build HF model", exc)
            report.data["hf_error"] = f"{type(exc).__name__}: {exc}"
            free_memory(device)
    if hf is not None:
        report.log("HF model built; assembling moeserve's model over its tensors")
        try:
            ours = moeserve_from_hf(hf, args)
            report.data["weights"] = "identical: moeserve's model shares HF's seeded tensors"
            report.data["hf_attention"] = hf.config._attn_implementation
            return ours, hf
        except Exception as exc:
            report.error("share HF weights with moeserve", exc)
        free_memory(device)
        second_copy = args.parameter_count() * torch.empty((), dtype=dtype).element_size()
        if device.type == "cuda" and torch.cuda.mem_get_info(device)[0] < second_copy + HEADROOM:
            report.data["hf_error"] = "dropped: no room for a second copy of the weights"
            hf = None
            free_memory(device)
    report.log("building moeserve's model with seeded random weights on the device")
    report.data["weights"] = "seeded random, drawn on the device" + (
        "; HF has its own (different) weights" if hf is not None else ""
    )
    return build_random_on_device(args, device, dtype, ns.seed), hf


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    device, dtype = torch.device(ns.device), DTYPES[ns.dtype]
    report = Report(ns.out_dir / "gpu_bench.json", device)
    report.install_sigterm_handler()
    try:
        args = bench_model_args(ns)
    except ValueError as exc:
        return report.fail(str(exc))
    if device.type == "cuda" and not torch.cuda.is_available():
        return report.fail(
            f"torch {torch.__version__} sees no CUDA device (a CPU-only build such as the repo's "
            ".venv, or no GPU): run with a python whose torch has CUDA (PYTHON=... bench/gpu.sh)"
        )
    if device.type == "cuda" and device.index is None:
        device = report.device = torch.device("cuda", torch.cuda.current_device())
    element = torch.empty((), dtype=dtype).element_size()
    report.data["environment"] = environment(device, dtype, args.d_model)
    report.data["config"] = {
        "model_args": dataclasses.asdict(args),
        "parameters": args.parameter_count(),
        "active_parameters": args.active_parameter_count(),
        "weight_gb": args.parameter_count() * element / GB,
        "dtype": ns.dtype,
        "batch_sizes": ns.batch_sizes,
        "prompt_len": ns.prompt_len,
        "gen_len": ns.gen_len,
        "seed": ns.seed,
    }
    report.log(f"environment: {report.data['environment']}")
    report.log(f"config: {report.data['config']}")

    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        need = resident_bytes(args, element, with_hf=not ns.no_hf) + HEADROOM
        report.log(
            f"GPU memory: {free / GB:.1f} of {total / GB:.1f} GB free, need ≈{need / GB:.1f}"
        )
        if need > free:
            fixed = resident_bytes(args.replace(n_layers=0), element, with_hf=not ns.no_hf)
            per_layer = resident_bytes(args.replace(n_layers=1), element, with_hf=not ns.no_hf)
            fits = max(0, int((free - HEADROOM - fixed) // (per_layer - fixed)))
            return report.fail(
                f"needs ≈{need / GB:.1f} GB of GPU memory, {free / GB:.1f} GB free: "
                f"use --layers {fits} or fewer (or --no-hf)"
            )

    megabytes = ns.bandwidth_mb or (4096 if device.type == "cuda" else 64)
    report.log(f"measuring memory bandwidth ({megabytes} MB buffers)")
    matvec = measure_memory_bandwidth(device, megabytes=megabytes)
    copy = copy_bandwidth(device, megabytes)
    report.data["bandwidth"] = {
        "matvec_gb_per_s": matvec / GB,
        "copy_gb_per_s": copy / GB,
        "used_gb_per_s": max(matvec, copy) / GB,
    }
    free_memory(device)
    report.log(f"bandwidth: {report.data['bandwidth']}")
    report.save()

    started = time.perf_counter()
    ours, hf = build_models(ns, args, device, report)
    sync(device)
    report.data["build_s"] = time.perf_counter() - started
    if device.type == "cuda":
        report.data["resident_gb"] = torch.cuda.memory_allocated(device) / GB
    report.log(f"models ready in {report.data['build_s']:.1f} s; weights: {report.data['weights']}")
    report.save()
    if hf is not None:
        report.attempt("greedy agreement", lambda: greedy_agreement(hf, ours, device), "agreement")

    lengths = {"prompt_len": ns.prompt_len, "gen_len": ns.gen_len}
    for batch in ns.batch_sizes:  # moeserve first: its numbers are the point of the run
        ours_run = partial(run_benchmark, ours, batch_size=batch, seed=batch, **lengths)
        report.measure("moeserve", batch, ns.budget_s, ours_run)
    for batch in ns.batch_sizes if hf is not None else []:
        hf_run = partial(hf_benchmark, hf, device, batch_size=batch, seed=batch, **lengths)
        report.measure("hf", batch, ns.budget_s, hf_run)

    rows = table_rows(report.data, args, element)
    report.data["rows"] = rows
    table = markdown_table(rows, report.data)
    (ns.out_dir / "gpu_bench.md").write_text(table + "\n")
    print("\n" + table, flush=True)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
