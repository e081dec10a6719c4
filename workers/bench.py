"""`python -m workers.bench`: how fast the model and the serving engine run.

Static mode (default) times prefill + decode of one batch of random prompts: output
tokens/s (generated tokens ÷ wall seconds, prefill included), prefill tokens/s,
milliseconds per decode step, and the bandwidth limit for the same shape.

`--engine` mode serves `--requests` random requests at `--concurrency` through the
continuous-batching engine (lengths drawn from `--prompt-len A:B` / `--gen-len A:B`) and
compares with HF transformers in padded static batches on the same requests, plus a
shared-prefix workload with prefix caching off and on (`workers.engine_bench`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from workers.generation import generate
from workers.model.checkpoint import load_checkpoint
from workers.model.loading import TORCH_DTYPES, from_preset
from workers.model.transformer import MoETransformer
from workers.roofline import bandwidth_limit_tokens_per_s, measure_memory_bandwidth

DTYPES = TORCH_DTYPES  # the names ModelSource (the serving config) uses too


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m workers.bench", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="Hugging Face checkpoint directory")
    source.add_argument("--preset", help="built-in preset name, e.g. dbrx-tiny")
    parser.add_argument("--engine", action="store_true", help="benchmark the serving engine")
    parser.add_argument("--batch-size", type=int, help="static mode: sequences per batch")
    parser.add_argument("--prompt-len", required=True, help="tokens; engine mode: LOW:HIGH")
    parser.add_argument("--gen-len", required=True, help="tokens; engine mode: LOW:HIGH")
    parser.add_argument("--requests", type=int, default=64, help="engine mode: requests")
    parser.add_argument("--concurrency", type=int, default=16, help="engine mode: clients")
    parser.add_argument(
        "--shared-prefix", type=int, default=192, help="engine mode: system-prompt tokens"
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help="engine mode: skip HF transformers"
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (CPU)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print a JSON object last")
    return parser.parse_args(argv)


def load_model(args: argparse.Namespace) -> MoETransformer:
    dtype = DTYPES[args.dtype]
    if args.checkpoint:
        return load_checkpoint(args.checkpoint, device=args.device, dtype=dtype)
    return from_preset(args.preset, device=args.device, dtype=dtype, seed=args.seed)


def run_benchmark(
    model: MoETransformer,
    *,
    batch_size: int,
    prompt_len: int,
    gen_len: int,
    warmup: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(seed)
    vocab = model.args.vocab_size
    prompts = torch.randint(0, vocab, (batch_size, prompt_len), generator=generator)
    for _ in range(warmup):
        generate(model, prompts, max_new_tokens=min(gen_len, 4))
    start = time.perf_counter()
    result = generate(model, prompts, max_new_tokens=gen_len)
    wall = time.perf_counter() - start
    generated = sum(len(tokens) for tokens in result.tokens)
    assert generated == batch_size * gen_len, "no stop tokens are set, so every row runs out"

    device = model.output.weight.device
    bandwidth = measure_memory_bandwidth(device)
    limit = bandwidth_limit_tokens_per_s(
        model.args,
        batch_size=batch_size,
        context_len=prompt_len + gen_len // 2,
        bytes_per_element=model.output.weight.element_size(),
        bandwidth_bytes_per_s=bandwidth,
    )
    return {
        "batch_size": batch_size,
        "prompt_len": prompt_len,
        "gen_len": gen_len,
        "dtype": str(model.output.weight.dtype).removeprefix("torch."),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "parameters": model.args.parameter_count(),
        "wall_s": wall,
        "output_tokens_per_s": generated / wall,
        "prefill_tokens_per_s": batch_size * prompt_len / result.prefill_seconds,
        "decode_ms_per_step": 1000 * result.decode_seconds / max(result.decode_steps, 1),
        "memory_bandwidth_gb_per_s": bandwidth / 1e9,
        "bandwidth_limit_tokens_per_s": limit,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.engine:
        from workers.engine_cli import run_engine_benchmark

        return run_engine_benchmark(args, load_model)
    if args.batch_size is None:
        print("error: static mode needs --batch-size (or use --engine)", file=sys.stderr)
        return 2
    try:
        args.prompt_len, args.gen_len = int(args.prompt_len), int(args.gen_len)
    except ValueError:
        print("error: static mode takes whole numbers for --prompt-len/--gen-len", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"loading {args.checkpoint or args.preset} ({args.dtype}, {args.device})...",
        file=sys.stderr,
    )
    try:
        model = load_model(args)
    except ValueError as exc:  # unknown preset, weightless real shape, bad checkpoint
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"timing batch {args.batch_size}, prompt {args.prompt_len}, {args.gen_len} new tokens...",
        file=sys.stderr,
    )
    report = run_benchmark(
        model,
        batch_size=args.batch_size,
        prompt_len=args.prompt_len,
        gen_len=args.gen_len,
        warmup=args.warmup,
        seed=args.seed,
    )
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>30}: {value:.2f}" if isinstance(value, float) else f"{key:>30}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
