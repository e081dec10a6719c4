"""What a JSON schema costs the engine: decode throughput free vs constrained, in one run.

On the dbrx-tiny preset (random weights, cl100k vocabulary of 100,352 rows) on the CPU, at
batch 1 and batch 16 (16 concurrent requests), greedy, on the same prompts. The constrained
requests follow a bounded schema (exactly three order objects with short strings, an integer
range, an enum and a boolean: 60-odd tokens) until the grammar is complete; the free
requests then generate exactly as many tokens per request (`ignore_eos`, `max_tokens` = the
constrained length), so both sides are compared per generated token. Free and constrained
runs alternate `--repeats` times on one warm engine (vocabulary index built and schema
compiled before timing, prefix caching off so every run prefills alike); medians reported.

Decode tokens/s counts the tokens of every step after the first (the first prefills the
prompts and samples each request's first token) over those steps' wall time; end-to-end
tokens/s counts everything. Greedy, because the seeded sampler's `torch.multinomial` over
100k logits (~1.8 ms a row on a CPU) would dominate both sides alike.

    .venv/bin/python bench/constrained_decoding.py [--repeats 5] [--threads N]

Prints a JSON report, then a short table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from workers.engine.builder import build_engine
from workers.engine.config import EngineConfig
from workers.engine.constraint import Constraint
from workers.engine.engine import LLMEngine
from workers.engine.request import GenerationRequest
from workers.model.loading import from_preset
from workers.tokenizer import load_tokenizer

PRESET = "dbrx-tiny"
BATCHES = (1, 16)
ORDER = {
    "type": "object",
    "properties": {
        "sku": {"type": "string", "maxLength": 8},
        "qty": {"type": "integer", "minimum": 1, "maximum": 99},
        "status": {"enum": ["open", "paid", "shipped", "returned"]},
        "gift": {"type": "boolean"},
    },
    "required": ["sku", "qty", "status", "gift"],
    "additionalProperties": False,
}
SCHEMA = {
    "type": "object",
    "properties": {"orders": {"type": "array", "minItems": 3, "maxItems": 3, "items": ORDER}},
    "required": ["orders"],
    "additionalProperties": False,
}
QUESTIONS = [
    "List the last three orders of customer {} as JSON.",
    "Which three orders of account {} are still open? Answer in JSON.",
    "Give me three example orders for store {}, JSON only.",
    "Summarise the three newest orders of client {} as JSON.",
]


@dataclass(frozen=True)
class Run:
    tokens: list[int]  # generated per request
    wall_s: float
    decode_tokens: int  # generated in the steps after the first
    decode_s: float
    step_ms: list[float]

    @property
    def tokens_per_s(self) -> float:
        return sum(self.tokens) / self.wall_s

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_s


def prompts(tokenizer: Any, batch: int) -> list[list[int]]:
    return [tokenizer.encode(QUESTIONS[i % len(QUESTIONS)].format(1000 + i)) for i in range(batch)]


def run(engine: LLMEngine, requests: list[GenerationRequest]) -> Run:
    """Queue `requests` (compile cached: not timed) and step until all are done."""
    for request in requests:
        engine.add_request(request)
    produced = {r.request_id: 0 for r in requests}
    step_ms: list[float] = []
    first_step_tokens = 0
    start = time.perf_counter()
    while engine.has_unfinished():
        step_start = time.perf_counter()
        chunks = engine.step()
        step_ms.append((time.perf_counter() - step_start) * 1e3)
        for chunk in chunks:
            produced[chunk.request_id] += 1  # one sampled token per chunk (stop token included)
        if len(step_ms) == 1:
            first_step_tokens = len(chunks)
    wall = time.perf_counter() - start
    tokens = [produced[r.request_id] for r in requests]
    return Run(tokens, wall, sum(tokens) - first_step_tokens, sum(step_ms[1:]) / 1e3, step_ms)


def constrained_requests(
    batch_prompts: list[list[int]], tag: str, constraint: Constraint
) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            request_id=f"{tag}-{i}",
            prompt_token_ids=p,
            max_tokens=400,  # the schema ends far sooner; 400 only guards a runaway
            temperature=0,
            constraint=constraint,
        )
        for i, p in enumerate(batch_prompts)
    ]


def free_requests(
    batch_prompts: list[list[int]], tag: str, lengths: list[int]
) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            request_id=f"{tag}-{i}",
            prompt_token_ids=p,
            max_tokens=n,
            temperature=0,
            ignore_eos=True,
        )
        for i, (p, n) in enumerate(zip(batch_prompts, lengths, strict=True))
    ]


def measure_batch(engine: LLMEngine, tokenizer: Any, batch: int, repeats: int) -> dict[str, Any]:
    constraint = Constraint.json_schema(SCHEMA)
    batch_prompts = prompts(tokenizer, batch)
    # Untimed: builds the vocabulary index, compiles the schema, learns each length.
    warm = run(engine, constrained_requests(batch_prompts, f"warm{batch}", constraint))
    lengths = warm.tokens
    run(engine, free_requests(batch_prompts, f"warmfree{batch}", lengths))
    free: list[Run] = []
    constrained: list[Run] = []
    for r in range(repeats):
        free.append(run(engine, free_requests(batch_prompts, f"f{batch}-{r}", lengths)))
        done = run(engine, constrained_requests(batch_prompts, f"c{batch}-{r}", constraint))
        assert done.tokens == lengths, "greedy: every constrained run makes the same tokens"
        constrained.append(done)

    def summary(runs: list[Run]) -> dict[str, float]:
        return {
            "decode_tokens_per_s": round(statistics.median(x.decode_tokens_per_s for x in runs), 1),
            "end_to_end_tokens_per_s": round(statistics.median(x.tokens_per_s for x in runs), 1),
            "decode_step_p50_ms": round(
                statistics.median(ms for x in runs for ms in x.step_ms[1:]), 3
            ),
        }

    free_summary, constrained_summary = summary(free), summary(constrained)
    ratio = constrained_summary["decode_tokens_per_s"] / free_summary["decode_tokens_per_s"]
    return {
        "batch": batch,
        "tokens_per_request": lengths,
        "free": free_summary,
        "constrained": constrained_summary,
        "constrained_over_free_decode": round(ratio, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="free/constrained pairs")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer("cl100k_base")
    model = from_preset(PRESET, seed=0)
    config = EngineConfig(prefix_caching=False, max_num_seqs=max(BATCHES))
    engine = build_engine(model, config, tokenizer=tokenizer)
    results = [measure_batch(engine, tokenizer, batch, args.repeats) for batch in BATCHES]
    report = {
        "preset": PRESET,
        "device": "cpu",
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "sampling": "greedy",
        "schema": SCHEMA,
        "results": results,
    }
    print(json.dumps(report, indent=1))
    print(
        f"\n{'batch':>5} {'free tok/s':>11} {'json tok/s':>11} {'ratio':>6} "
        f"{'free step ms':>13} {'json step ms':>13} {'tokens/request':>15}"
    )
    for r in results:
        lengths = r["tokens_per_request"]
        span = f"{min(lengths)}-{max(lengths)}" if min(lengths) != max(lengths) else lengths[0]
        print(
            f"{r['batch']:>5} {r['free']['decode_tokens_per_s']:>11} "
            f"{r['constrained']['decode_tokens_per_s']:>11} "
            f"{r['constrained_over_free_decode']:>6} "
            f"{r['free']['decode_step_p50_ms']:>13} {r['constrained']['decode_step_p50_ms']:>13} "
            f"{span!s:>15}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
