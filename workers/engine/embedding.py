"""Embeddings from a generation model: the mean of its final hidden states, L2-normalised.

The served models (DBRX, Mixtral) are trained to predict the next token, not to embed text.
An "embedding" here is therefore a pooled hidden state — the final-norm hidden state (the
input of the LM head) averaged over the input's positions and scaled to unit length. It is
deterministic and places similar inputs nearer each other than unrelated ones, but it is
NOT a trained embedding model: no contrastive training, no retrieval-quality guarantees.
Use a dedicated embedding model where retrieval quality matters.

Inputs are token-id lists (the gateway tokenizes); each runs as one causal forward with no
KV cache, so embeddings take no KV blocks away from generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workers.engine.request import Usage


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: list[list[float]]  # one unit-length vector per input, in input order
    usage: Usage  # prompt tokens: every input token; completion tokens: 0

    @classmethod
    def of(cls, inputs: Sequence[Sequence[int]], vectors: list[list[float]]) -> EmbeddingResult:
        return cls(vectors, Usage(prompt_tokens=sum(map(len, inputs)), completion_tokens=0))


def check_embedding_inputs(inputs: Sequence[Sequence[int]], max_seq_len: int) -> None:
    """ValueError saying what to change when `inputs` cannot be embedded as they are."""
    if not inputs:
        raise ValueError("no inputs to embed: send at least one text or token list")
    for index, token_ids in enumerate(inputs):
        if not token_ids:
            raise ValueError(f"input {index} is empty: send at least one token per input")
        if len(token_ids) > max_seq_len:
            raise ValueError(
                f"input {index} has {len(token_ids)} tokens; this model's context is "
                f"{max_seq_len} tokens, so shorten or split that input"
            )


def mean_pool(hidden: torch.Tensor) -> torch.Tensor:
    """Hidden states [T, D] -> the unit-length mean over positions [D] (fp32, on CPU)."""
    pooled = hidden.float().mean(dim=0)
    return F.normalize(pooled, dim=0).cpu()
