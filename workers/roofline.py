"""The physical ceiling for decode: measured memory bandwidth ÷ bytes read per decode step.

Decoding is memory-bound: every step reads the weights that the batch's tokens touch (the
attention and router weights of every layer, the experts the batch hits, the LM head) plus
the KV cache. Benchmarks report their throughput against this limit.
"""

from __future__ import annotations

import time

import torch

from workers.model.args import ModelArgs


def expected_experts_hit(args: ModelArgs, batch_size: int) -> float:
    """Distinct experts per layer hit by `batch_size` tokens under uniform top-k routing."""
    miss = (1 - args.top_k / args.n_experts) ** batch_size
    return args.n_experts * (1 - miss) if batch_size > 1 else float(args.top_k)


def decode_bytes_per_step(
    args: ModelArgs, *, batch_size: int, context_len: int, bytes_per_element: int
) -> float:
    """Bytes one decode step of `batch_size` sequences must read, at `context_len` positions."""
    d = args.d_model
    attention = d * (args.q_size + 2 * args.kv_size) + args.q_size * d
    per_layer = attention + args.n_experts * d + 2 * d  # + router + norms
    experts = expected_experts_hit(args, batch_size) * 3 * args.ffn_hidden_size * d
    weights = args.n_layers * (per_layer + experts) + d + args.vocab_size * d  # + head
    weights += batch_size * d  # embedding rows
    kv_cache = batch_size * context_len * args.kv_bytes_per_token(bytes_per_element)
    return weights * bytes_per_element + kv_cache


def measure_memory_bandwidth(
    device: torch.device | str = "cpu", *, megabytes: int = 512, repeats: int = 5
) -> float:
    """Best observed read bandwidth in bytes/s, from a matrix-vector product over a buffer
    far larger than the caches — the access pattern of a batch-1 decode step."""
    device = torch.device(device)
    rows = 4096
    cols = megabytes * 1024 * 1024 // 4 // rows
    matrix = torch.ones(rows, cols, device=device)
    vector = torch.ones(cols, device=device)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        matrix.mv(vector)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return matrix.numel() * matrix.element_size() / best


def bandwidth_limit_tokens_per_s(
    args: ModelArgs,
    *,
    batch_size: int,
    context_len: int,
    bytes_per_element: int,
    bandwidth_bytes_per_s: float,
) -> float:
    step = decode_bytes_per_step(
        args,
        batch_size=batch_size,
        context_len=context_len,
        bytes_per_element=bytes_per_element,
    )
    return bandwidth_bytes_per_s * batch_size / step
