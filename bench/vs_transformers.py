"""Benchmark moeserve's model against Hugging Face transformers on the same checkpoint.

Both run the 309 M-parameter DBRX-architecture config of docs/models.md (d_model 512, 8 layers,
16 experts of 1024, top-4, vocab 100352), fp32, on the same random prompts, in this one
process, so machine noise hits both alike. Output tokens/s counts generated tokens over
wall seconds, prefill included; HF runs `generate` (greedy, eager attention) with EOS off.
moeserve runs twice: with plain torch matmuls (`use_plain_kernels(model)`) and as
it serves, with the kernels swapped in at load (`workers.model.kernels`: oneDNN-packed
weights on CPU fp32).

    make bench            # or: .venv/bin/python bench/vs_transformers.py --batch-sizes 1 8 32
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from workers.bench import run_benchmark
from workers.generation import generate
from workers.model.checkpoint import load_checkpoint, save_checkpoint
from workers.model.kernels import use_fast_kernels, use_plain_kernels
from workers.model.loading import build_random
from workers.model.presets import preset


def hf_generate_tokens_per_s(model: Any, prompts: torch.Tensor, gen_len: int) -> float:
    kwargs = {
        "do_sample": False,
        "eos_token_id": None,
        "pad_token_id": 0,
        "attention_mask": torch.ones_like(prompts),
    }
    with torch.inference_mode():
        model.generate(prompts, max_new_tokens=4, min_new_tokens=4, **kwargs)  # warm-up
        start = time.perf_counter()
        out = model.generate(prompts, max_new_tokens=gen_len, min_new_tokens=gen_len, **kwargs)
        wall = time.perf_counter() - start
    generated = out.shape[1] - prompts.shape[1]
    assert generated == gen_len
    return prompts.shape[0] * generated / wall


def agreement(model: Any, ours: Any, prompts: torch.Tensor, gen_len: int) -> float:
    """Share of greedy tokens both implementations pick (a check that both compute the same)."""
    with torch.inference_mode():
        theirs = model.generate(
            prompts,
            max_new_tokens=gen_len,
            min_new_tokens=gen_len,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            attention_mask=torch.ones_like(prompts),
        )[:, prompts.shape[1] :]
    mine = torch.tensor(generate(ours, prompts, max_new_tokens=gen_len).tokens)
    return float((mine == theirs).float().mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--gen-len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON last")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    torch.set_num_threads(args.threads)
    config = preset("dbrx-bench-309m").args
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        print(
            f"writing a random {config.parameter_count() / 1e6:.0f} M-parameter DBRX checkpoint...",
            file=sys.stderr,
        )
        save_checkpoint(build_random(config, seed=0), Path(tmp))
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            tmp, dtype=torch.float32, attn_implementation="eager"
        ).eval()
        ours = load_checkpoint(tmp)
        check_prompts = torch.randint(
            0, config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1)
        )
        match = agreement(hf, ours, check_prompts, 8)
        print(f"greedy-token agreement with transformers: {match:.0%}", file=sys.stderr)
        for batch in args.batch_sizes:
            print(f"batch {batch}: transformers...", file=sys.stderr)
            prompts = torch.randint(
                0,
                config.vocab_size,
                (batch, args.prompt_len),
                generator=torch.Generator().manual_seed(batch),
            )
            hf_tps = hf_generate_tokens_per_s(hf, prompts, args.gen_len)
            shape = {"batch_size": batch, "prompt_len": args.prompt_len, "gen_len": args.gen_len}
            print(f"batch {batch}: moeserve, plain torch matmuls...", file=sys.stderr)
            use_plain_kernels(ours)
            plain = run_benchmark(ours, **shape, seed=batch)
            use_fast_kernels(ours)
            print(f"batch {batch}: moeserve...", file=sys.stderr)
            report = run_benchmark(ours, **shape, seed=batch)
            rows.append(
                {
                    **report,
                    "hf_output_tokens_per_s": hf_tps,
                    "speedup": report["output_tokens_per_s"] / hf_tps,
                    "unpacked_output_tokens_per_s": plain["output_tokens_per_s"],
                    "greedy_agreement": match,
                }
            )

    print(
        f"\n{config.parameter_count() / 1e6:.0f} M-param DBRX config, fp32, "
        f"{args.threads} threads, prompt {args.prompt_len}, {args.gen_len} new tokens"
    )
    print(
        "| batch | transformers tok/s | moeserve, unpacked tok/s | moeserve tok/s | speedup "
        "| decode ms/step | bandwidth limit tok/s | of limit |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['batch_size']} | {row['hf_output_tokens_per_s']:.1f} "
            f"| {row['unpacked_output_tokens_per_s']:.1f} "
            f"| {row['output_tokens_per_s']:.1f} | {row['speedup']:.2f}x "
            f"| {row['decode_ms_per_step']:.1f} | {row['bandwidth_limit_tokens_per_s']:.0f} "
            f"| {row['output_tokens_per_s'] / row['bandwidth_limit_tokens_per_s']:.0%} |"
        )
    print(f"measured memory bandwidth: {rows[0]['memory_bandwidth_gb_per_s']:.1f} GB/s")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
