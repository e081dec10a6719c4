"""The baseline the engine is measured against: HF transformers `generate` on the same
weights, serving requests the static way — fixed batches, prompts left-padded to the
longest in the batch, every row decoding until the batch's longest request is done.

Only benchmarks import this; `transformers` is a dev dependency, imported lazily.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from workers.model.checkpoint import save_checkpoint
from workers.model.transformer import MoETransformer


def load_hf_twin(model: MoETransformer) -> Any:
    """An HF model with exactly `model`'s weights (saved and re-read as a checkpoint)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(model, Path(tmp))
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            tmp, dtype=model.output.weight.dtype, attn_implementation="eager"
        )
    return hf.eval()


def hf_static_batches(
    hf: Any, prompts: list[list[int]], gen_lens: list[int], *, batch_size: int, pad_id: int = 0
) -> tuple[float, list[list[int]]]:
    """Serve the requests in arrival order in batches of `batch_size`; returns the wall
    seconds and each request's first `gen_len` generated tokens."""
    outputs: list[list[int]] = []
    start = time.perf_counter()
    for first in range(0, len(prompts), batch_size):
        batch = prompts[first : first + batch_size]
        lens = gen_lens[first : first + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.inference_mode():
            out = hf.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=max(lens),
                min_new_tokens=max(lens),
                do_sample=False,
                eos_token_id=None,
                pad_token_id=pad_id,
            )
        for row, gen_len in enumerate(lens):
            outputs.append(out[row, width : width + gen_len].tolist())
    return time.perf_counter() - start, outputs
