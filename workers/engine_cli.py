"""The `--engine` mode of `python -m workers.bench`: runs and prints the serving benchmark."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from workers.engine.async_engine import torch_thread
from workers.engine.config import EngineConfig
from workers.engine_bench import caching_gain, parse_range, random_workload, run_engine
from workers.model.transformer import MoETransformer


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_engine_benchmark(
    args: argparse.Namespace, load_model: Callable[[argparse.Namespace], MoETransformer]
) -> int:
    try:
        prompt_len, gen_len = parse_range(args.prompt_len), parse_range(args.gen_len)
        if args.requests < 1 or args.concurrency < 1:
            raise ValueError("--requests and --concurrency must be at least 1")
        _say(f"loading {args.checkpoint or args.preset} ({args.dtype}, {args.device})...")
        # All torch work on one thread, as in a replica (workers.engine.async_engine).
        thread = torch_thread()
        if args.threads:
            thread.submit(torch.set_num_threads, args.threads).result()
        model = thread.submit(load_model, args).result()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    vocab = model.args.vocab_size
    workload = random_workload(
        requests=args.requests, prompt_len=prompt_len, gen_len=gen_len, vocab=vocab, seed=args.seed
    )
    config = EngineConfig(
        max_num_seqs=max(args.concurrency, 1),
        kv_cache_tokens=args.concurrency * (prompt_len[1] + gen_len[1] + args.shared_prefix),
    )
    _say("warm-up...")
    warm = random_workload(requests=4, prompt_len=(8, 32), gen_len=(4, 4), vocab=vocab, seed=99)
    run_engine(model, warm, concurrency=4, config=config, step_thread=thread)

    _say(f"engine: {args.requests} requests at concurrency {args.concurrency}...")
    engine_run = run_engine(
        model, workload, concurrency=args.concurrency, config=config, step_thread=thread
    )
    report: dict[str, Any] = {
        "model": args.checkpoint or args.preset,
        "parameters": model.args.parameter_count(),
        "dtype": args.dtype,
        "threads": thread.submit(torch.get_num_threads).result(),
        "requests": args.requests,
        "concurrency": args.concurrency,
        "prompt_len": args.prompt_len,
        "gen_len": args.gen_len,
        "engine": engine_run.summary(),
    }
    _say(f"  {report['engine']['output_tokens_per_s']:.1f} output tok/s")

    if not args.no_baseline:
        from workers.hf_baseline import hf_static_batches, load_hf_twin

        _say(f"transformers: the same requests in padded static batches of {args.concurrency}...")
        hf = thread.submit(load_hf_twin, model).result()
        thread.submit(hf_static_batches, hf, workload.prompts[:2], [2, 2], batch_size=2).result()
        wall, hf_tokens = thread.submit(
            hf_static_batches, hf, workload.prompts, workload.gen_lens, batch_size=args.concurrency
        ).result()
        same = sum(a == b for a, b in zip(hf_tokens, engine_run.tokens, strict=True))
        hf_tps = workload.output_tokens / wall
        report["hf_static"] = {"wall_s": wall, "output_tokens_per_s": hf_tps}
        report["speedup_vs_hf"] = report["engine"]["output_tokens_per_s"] / hf_tps
        report["requests_with_identical_tokens"] = same
        _say(f"  {hf_tps:.1f} output tok/s; {same}/{args.requests} requests identical")
        del hf

    report["prefix_cache"] = _prefix_cache_gain(model, args, config, gen_len, thread)
    _print_table(report)
    if args.json:
        print(json.dumps(report))
    return 0


def _prefix_cache_gain(
    model: MoETransformer,
    args: argparse.Namespace,
    config: EngineConfig,
    gen_len: tuple[int, int],
    thread: ThreadPoolExecutor,
) -> dict[str, Any]:
    """Same requests sharing one system prompt, prefix caching off vs on."""
    shared = random_workload(
        requests=args.requests,
        prompt_len=(16, 64),
        gen_len=(gen_len[0], min(gen_len[1], 32)),
        vocab=model.args.vocab_size,
        seed=args.seed + 1,
        shared_prefix=args.shared_prefix,
    )
    runs = {}
    for caching in (False, True):
        _say(
            f"shared {args.shared_prefix}-token prefix, prefix caching {'on' if caching else 'off'}"
        )
        runs[caching] = run_engine(
            model,
            shared,
            concurrency=args.concurrency,
            config=config.model_copy(update={"prefix_caching": caching}),
            step_thread=thread,
        )
    assert runs[False].tokens == runs[True].tokens, "prefix caching must not change output"
    return {
        "shared_prefix_tokens": args.shared_prefix,
        "off": runs[False].summary(),
        "on": runs[True].summary(),
        **caching_gain(runs[False], runs[True]),
    }


def _print_table(report: dict[str, Any]) -> None:
    engine = report["engine"]
    print(
        f"\n{report['parameters'] / 1e6:.0f} M params, {report['dtype']}, {report['threads']} "
        f"threads: {report['requests']} requests, concurrency {report['concurrency']}, prompt "
        f"{report['prompt_len']}, generate {report['gen_len']}"
    )
    print("| server | output tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms |")
    print("|---|---:|---:|---:|")
    print(
        f"| moeserve engine | {engine['output_tokens_per_s']:.1f} "
        f"| {engine['ttft_p50_ms']:.0f} / {engine['ttft_p99_ms']:.0f} "
        f"| {engine['itl_p50_ms']:.0f} / {engine['itl_p99_ms']:.0f} |"
    )
    if "hf_static" in report:
        print(
            f"| HF generate, static batches of {report['concurrency']} "
            f"| {report['hf_static']['output_tokens_per_s']:.1f} | | |"
        )
        print(f"engine vs HF: {report['speedup_vs_hf']:.2f}x")
    prefix = report["prefix_cache"]
    print(
        f"shared {prefix['shared_prefix_tokens']}-token prefix: prefix caching gives "
        f"{prefix['throughput_gain']:.2f}x throughput, {prefix['ttft_p50_gain']:.2f}x lower "
        f"median TTFT, {prefix['hit_rate']:.0%} of prompt tokens from cache"
    )
