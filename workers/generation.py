"""Static-batch generation with a KV cache: one prefill, then one decode step per token.

This is the reference loop for the CLI, the benchmark and the parity tests. The serving
engine (continuous batching, paged cache) drives the same model call per step.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field

import torch

from workers.model.transformer import MoETransformer
from workers.sampling import GREEDY, SamplingParams, select_next


@dataclass
class GenerationResult:
    tokens: list[list[int]]  # generated ids per sequence, stop token excluded
    finish_reasons: list[str]  # "stop" or "length"
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    decode_steps: int = 0
    step_seconds: list[float] = field(default_factory=list)


@torch.inference_mode()
def generate(
    model: MoETransformer,
    prompts: torch.Tensor,  # [B, T] prompt ids, all the same length
    *,
    max_new_tokens: int,
    sampling: SamplingParams = GREEDY,
    stop_token_ids: Collection[int] = (),
) -> GenerationResult:
    bsz, prompt_len = prompts.shape
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    context = model.args.max_seq_len
    if prompt_len + max_new_tokens > context:
        raise ValueError(
            f"prompt ({prompt_len}) + max_new_tokens ({max_new_tokens}) exceeds "
            f"the model's context of {context} tokens"
        )
    device = model.output.weight.device
    generator = None
    if sampling.seed is not None:
        generator = torch.Generator(device=device).manual_seed(sampling.seed)
    stops = torch.tensor(sorted(stop_token_ids), device=device, dtype=torch.long)
    cache = model.new_cache(bsz, prompt_len + max_new_tokens)

    started = time.perf_counter()
    logits = model(prompts.to(device), cache=cache, last_logits_only=True)[:, -1]
    next_ids = select_next(logits, sampling, generator)
    _sync(device)
    result = GenerationResult([[] for _ in range(bsz)], ["length"] * bsz)
    result.prefill_seconds = time.perf_counter() - started

    finished = torch.zeros(bsz, dtype=torch.bool, device=device)
    columns = [next_ids]
    for step in range(max_new_tokens):
        finished |= torch.isin(next_ids, stops)
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        step_start = time.perf_counter()
        logits = model(next_ids.unsqueeze(1), cache=cache)[:, -1]
        next_ids = select_next(logits, sampling, generator)
        _sync(device)
        result.step_seconds.append(time.perf_counter() - step_start)
        columns.append(next_ids)
    result.decode_steps = len(result.step_seconds)
    result.decode_seconds = sum(result.step_seconds)

    stop_set = set(stop_token_ids)
    for row, ids in enumerate(torch.stack(columns, dim=1).tolist()):
        for token in ids:
            if token in stop_set:
                result.finish_reasons[row] = "stop"
                break
            result.tokens[row].append(token)
    return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
