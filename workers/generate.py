"""`python -m workers.generate`: generate text from a preset or a checkpoint directory.

    python -m workers.generate --preset dbrx-tiny --prompt "Hello" --max-new-tokens 16
    python -m workers.generate --checkpoint ./my-dbrx --chat --prompt "Hi" --max-new-tokens 64
    python -m workers.generate --preset dbrx-tiny --prompt-ids 15339,1917 --greedy --json

Text goes to stdout (or one JSON object with `--json`); progress and timings to stderr.
Tiny presets have random weights: their text is gibberish by design.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from workers.bench import DTYPES
from workers.generation import generate
from workers.model.checkpoint import load_checkpoint
from workers.model.hf_config import read_args
from workers.model.loading import from_preset
from workers.model.presets import preset, runnable_preset
from workers.model.transformer import MoETransformer
from workers.sampling import GREEDY, SamplingParams
from workers.tokenizer import Tokenizer, load_tokenizer


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m workers.generate", description=__doc__.split("\n")[0]
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="Hugging Face checkpoint directory")
    source.add_argument("--preset", help="built-in preset, e.g. dbrx-tiny or mixtral-tiny")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text")
    prompt.add_argument("--prompt-ids", help="comma-separated token ids, e.g. 15339,1917")
    parser.add_argument(
        "--chat", action="store_true", help="wrap --prompt as one user message in the chat template"
    )
    parser.add_argument("--max-new-tokens", type=int, required=True)
    parser.add_argument("--greedy", action="store_true", help="argmax decoding")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, help="sampling seed (same seed, same tokens)")
    parser.add_argument("--model-seed", type=int, default=0, help="weight seed of a preset")
    parser.add_argument(
        "--tokenizer",
        help="cl100k_base or a tokenizer.json directory "
        "(default: the preset's, or the checkpoint directory's)",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.chat and args.prompt is None:
        parser.error("--chat needs --prompt (text), not --prompt-ids")
    return args


def _tokenizer_name(args: argparse.Namespace) -> str:
    if args.tokenizer:
        return str(args.tokenizer)
    if args.preset:
        return preset(args.preset).tokenizer
    if (Path(args.checkpoint) / "tokenizer.json").exists():
        return str(args.checkpoint)
    if read_args(args.checkpoint).vocab_size == 100352:
        return "cl100k_base"  # DBRX checkpoints ship tiktoken files, not tokenizer.json
    raise SystemExit(
        f"no tokenizer.json in {args.checkpoint}; pass --tokenizer, or use --prompt-ids"
    )


def _load_model(args: argparse.Namespace) -> MoETransformer:
    dtype = DTYPES[args.dtype]
    if args.checkpoint:
        return load_checkpoint(args.checkpoint, device=args.device, dtype=dtype)
    return from_preset(args.preset, device=args.device, dtype=dtype, seed=args.model_seed)


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(piece) for piece in text.split(",") if piece.strip()]
    except ValueError:
        raise SystemExit(f"--prompt-ids must be comma-separated integers, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _run(args)
    except ValueError as exc:  # bad preset, checkpoint or prompt: say what to change
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.preset:
        runnable_preset(args.preset)  # fail before any output if it has no weights to run
    tokenizer: Tokenizer | None = None
    if args.prompt is not None or not args.json:
        tokenizer = load_tokenizer(_tokenizer_name(args))
    if args.prompt_ids is not None:
        prompt_ids = _parse_ids(args.prompt_ids)
    else:
        assert tokenizer is not None
        prompt_ids = (
            tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}])
            if args.chat
            else tokenizer.encode(args.prompt)
        )
    if not prompt_ids:
        raise SystemExit("the prompt is empty: give at least one token")

    print(f"loading {args.checkpoint or args.preset}...", file=sys.stderr)
    started = time.perf_counter()
    model = _load_model(args)
    vocab = model.args.vocab_size
    if max(prompt_ids) >= vocab or min(prompt_ids) < 0:
        raise SystemExit(f"prompt ids must lie in [0, {vocab}) for this model")
    loaded = time.perf_counter()
    sampling = (
        GREEDY
        if args.greedy
        else SamplingParams(
            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed
        )
    )
    stops = (
        tokenizer.stop_token_ids
        if tokenizer
        else ({model.args.eos_token_id} if model.args.eos_token_id is not None else set())
    )
    result = generate(
        model,
        torch.tensor([prompt_ids]),
        max_new_tokens=args.max_new_tokens,
        sampling=sampling,
        stop_token_ids=stops,
    )
    tokens = result.tokens[0]
    text = tokenizer.decode(tokens) if tokenizer else None
    seconds = result.prefill_seconds + result.decode_seconds
    print(
        f"loaded in {loaded - started:.1f}s; {len(prompt_ids)} prompt + {len(tokens)} new "
        f"tokens in {seconds:.2f}s ({len(tokens) / max(seconds, 1e-9):.1f} tok/s), "
        f"finish_reason={result.finish_reasons[0]}",
        file=sys.stderr,
    )
    if args.json:
        print(
            json.dumps(
                {
                    "prompt_ids": prompt_ids,
                    "token_ids": tokens,
                    "text": text,
                    "finish_reason": result.finish_reasons[0],
                    "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": len(tokens)},
                }
            )
        )
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
