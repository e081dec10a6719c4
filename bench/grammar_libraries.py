"""Which grammar library constrains decoding: xgrammar or llguidance, measured on DBRX's
cl100k vocabulary (100,352 rows), in one run, on the same schemas and the same walks.

For each library: the tokenizer set-up, the compile time of each schema (cold, then again),
both with compact JSON (no free whitespace: a random-weight model would otherwise pad
forever), and the per-token cost of one step (compute the next-token mask, apply it to a [B, V] row
of logits, accept the token a random-weight "model" picks inside the mask) at batch 1 and
16, as medians and p99 over every step of seeded walks until the grammar accepts. A walk
whose masked token the matcher refuses is a library fault; walks still going after
`--max-steps` (random logits rarely close an unbounded string) are counted apart.

    .venv/bin/python bench/grammar_libraries.py [--walks 8] [--max-steps 400]

A library that is not installed is skipped with a note (`pip install xgrammar` or
`llguidance`). xgrammar needs transformers at import time and pulls triton on x86-64 Linux.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from collections.abc import Callable
from typing import Any, Protocol

import torch

from workers.tokenizer import DBRX_VOCAB_SIZE, Cl100kTokenizer, cl100k_encoding

SCHEMAS: dict[str, dict[str, Any]] = {
    "flat": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 40},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "member": {"type": "boolean"},
        },
        "required": ["name", "age", "member"],
        "additionalProperties": False,
    },
    "nested": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 30},
            "forecast": {
                "type": "array",
                "minItems": 1,
                "maxItems": 3,
                "items": {
                    "type": "object",
                    "properties": {
                        "day": {"enum": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]},
                        "high_c": {"type": "number"},
                        "rain": {"type": "boolean"},
                    },
                    "required": ["day", "high_c", "rain"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["city", "forecast"],
        "additionalProperties": False,
    },
    "any_json": {"type": "object"},
}


class Matcher(Protocol):
    def mask_into(self, bitmask: torch.Tensor, row: int) -> None: ...
    def accept(self, token: int) -> bool: ...
    def done(self) -> bool: ...


class Library(Protocol):
    name: str

    def compile(self, schema: dict[str, Any]) -> Any: ...
    def matcher(self, compiled: Any) -> Matcher: ...
    def bitmask(self, batch: int) -> torch.Tensor: ...
    def fill(self, matchers: list[Matcher], bitmask: torch.Tensor) -> None: ...
    def apply(self, logits: torch.Tensor, bitmask: torch.Tensor) -> None: ...


class LLGuidance:
    name = "llguidance"

    def __init__(self) -> None:
        import llguidance
        import llguidance.tiktoken
        import llguidance.torch

        self.ll, self.torch_ops = llguidance, llguidance.torch
        eos = Cl100kTokenizer.eos_token_id
        self.tokenizer = llguidance.tiktoken.lltokenizer_from_encoding(
            cl100k_encoding(), n_vocab=DBRX_VOCAB_SIZE, eos_token=eos
        )
        self.executor = llguidance.LLExecutor()

    def compile(self, schema: dict[str, Any]) -> Any:
        grammar = self.ll.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults={"whitespace_flexible": False}
        )
        error = self.ll.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error:
            raise ValueError(error)
        return grammar

    def matcher(self, compiled: Any) -> Matcher:
        return _LLMatcher(self.ll.LLMatcher(self.tokenizer, compiled), self.torch_ops)

    def bitmask(self, batch: int) -> torch.Tensor:
        return self.torch_ops.allocate_token_bitmask(batch, DBRX_VOCAB_SIZE)

    def fill(self, matchers: list[Matcher], bitmask: torch.Tensor) -> None:
        if len(matchers) == 1:
            matchers[0].mask_into(bitmask, 0)
            return
        pairs = [(m.inner, i) for i, m in enumerate(matchers)]  # type: ignore[attr-defined]
        self.torch_ops.fill_next_token_bitmask_par(self.executor, pairs, bitmask)

    def apply(self, logits: torch.Tensor, bitmask: torch.Tensor) -> None:
        self.torch_ops.apply_token_bitmask_inplace(logits, bitmask)


class _LLMatcher:
    def __init__(self, inner: Any, ops: Any) -> None:
        self.inner, self.ops = inner, ops

    def mask_into(self, bitmask: torch.Tensor, row: int) -> None:
        self.ops.fill_next_token_bitmask(self.inner, bitmask, row)

    def accept(self, token: int) -> bool:
        return bool(self.inner.consume_token(token))

    def done(self) -> bool:
        return bool(self.inner.is_stopped())


class XGrammar:
    name = "xgrammar"

    def __init__(self) -> None:
        import xgrammar  # type: ignore[import-not-found]

        self.xgr = xgrammar
        encoding = cl100k_encoding()
        vocab: list[bytes | str] = [b""] * DBRX_VOCAB_SIZE
        for token, rank in encoding._mergeable_ranks.items():
            vocab[rank] = token
        for text, rank in encoding._special_tokens.items():
            vocab[rank] = text
        info = xgrammar.TokenizerInfo(
            vocab,
            vocab_type=xgrammar.VocabType.RAW,
            vocab_size=DBRX_VOCAB_SIZE,
            stop_token_ids=[Cl100kTokenizer.eos_token_id],
        )
        self.compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)

    def compile(self, schema: dict[str, Any]) -> Any:
        return self.compiler.compile_json_schema(
            json.dumps(schema), any_whitespace=False, strict_mode=True
        )

    def matcher(self, compiled: Any) -> Matcher:
        return _XMatcher(self.xgr.GrammarMatcher(compiled))

    def bitmask(self, batch: int) -> torch.Tensor:
        return self.xgr.allocate_token_bitmask(batch, DBRX_VOCAB_SIZE)

    def fill(self, matchers: list[Matcher], bitmask: torch.Tensor) -> None:
        for row, matcher in enumerate(matchers):
            matcher.mask_into(bitmask, row)

    def apply(self, logits: torch.Tensor, bitmask: torch.Tensor) -> None:
        self.xgr.apply_token_bitmask_inplace(logits, bitmask)


class _XMatcher:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def mask_into(self, bitmask: torch.Tensor, row: int) -> None:
        self.inner.fill_next_token_bitmask(bitmask, row)

    def accept(self, token: int) -> bool:
        return bool(self.inner.accept_token(token))

    def done(self) -> bool:
        return bool(self.inner.is_terminated())


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _walk(
    lib: Library, compiled: Any, batch: int, seed: int, max_steps: int
) -> tuple[list[float], int, int]:
    """Seeded random-logit walks of `batch` matchers until each is done or `max_steps`;
    the per-step times (mask + apply + accept, whole batch), the walks whose token inside
    the mask the matcher then refused (a library fault), and the walks still going."""
    generator = torch.Generator().manual_seed(seed)
    matchers = [lib.matcher(compiled) for _ in range(batch)]
    bitmask = lib.bitmask(batch)
    eos = Cl100kTokenizer.eos_token_id
    live = list(range(batch))
    times: list[float] = []
    refused = 0
    for _ in range(max_steps):
        if not live:
            break
        logits = torch.randn(len(live), DBRX_VOCAB_SIZE, generator=generator)
        start = time.perf_counter()
        rows = [matchers[i] for i in live]
        lib.fill(rows, bitmask)
        lib.apply(logits, bitmask[: len(live)])
        tokens = logits.argmax(dim=-1).tolist()
        still = []
        for i, token in zip(live, tokens, strict=True):
            if not matchers[i].accept(token):
                refused += 1
            elif token != eos and not matchers[i].done():
                still.append(i)
        times.append(time.perf_counter() - start)
        live = still
    return times, refused, len(live)


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def measure(lib_factory: Callable[[], Library], walks: int, max_steps: int) -> dict[str, Any]:
    lib, setup_s = _timed(lib_factory)
    report: dict[str, Any] = {"library": lib.name, "tokenizer_setup_s": round(setup_s, 3)}
    for name, schema in SCHEMAS.items():
        compile_it = functools.partial(lib.compile, schema)
        compiled, cold = _timed(compile_it)
        _, warm = _timed(compile_it)
        entry: dict[str, Any] = {"compile_cold_ms": round(cold * 1e3, 2)}
        entry["compile_again_ms"] = round(warm * 1e3, 2)
        for batch in (1, 16):
            times: list[float] = []
            refused = unfinished = 0
            for seed in range(walks):
                walk_times, bad, going = _walk(lib, compiled, batch, seed, max_steps)
                times += walk_times
                refused, unfinished = refused + bad, unfinished + going
            entry[f"b{batch}_step_median_ms"] = round(statistics.median(times) * 1e3, 3)
            entry[f"b{batch}_step_p99_ms"] = round(_p99(times) * 1e3, 3)
            entry[f"b{batch}_refused_walks"] = refused
            entry[f"b{batch}_unfinished_walks"] = unfinished
        report[name] = entry
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--walks", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=400)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for factory in (LLGuidance, XGrammar):
        try:
            report = measure(factory, args.walks, args.max_steps)
        except ImportError as exc:
            print(json.dumps({"library": factory.name, "skipped": f"not installed: {exc}"}))
            continue
        print(json.dumps(report, indent=1), flush=True)


if __name__ == "__main__":
    main()
