"""Per-sequence next-token selection over a step's logits.

Greedy rows share one argmax; sampled rows each use their own `torch.Generator`, seeded
from the request's seed and the choice index, so a seeded request repeats its tokens no
matter which other requests share the step.

Constrained rows (`bitmask`, see `workers.engine.grammar`) have the tokens their grammar bans
set to -inf first, so greedy, sampling and logprobs all see only the allowed tokens; a row
whose mask allows everything is untouched, so free requests share the batch unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workers.engine.grammar import apply_token_bitmask
from workers.engine.request import TokenLogprob
from workers.sampling import SamplingParams, select_next


@dataclass
class SamplingState:
    params: SamplingParams
    generator: torch.Generator | None
    num_logprobs: int | None


def new_sampling_state(
    *,
    temperature: float,
    top_p: float,
    top_k: int,
    seed: int | None,
    choice: int,
    num_logprobs: int | None,
) -> SamplingState:
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    generator = None
    if not params.greedy:
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(hash((seed, choice)) & 0x7FFF_FFFF_FFFF_FFFF)
    return SamplingState(params, generator, num_logprobs)


def sample(
    logits: torch.Tensor, states: list[SamplingState], bitmask: torch.Tensor | None = None
) -> tuple[list[int], list[TokenLogprob | None]]:
    """logits [B, V] (one row per sampling sequence) -> token ids and optional logprobs.

    `bitmask` [B, ceil(V / 32)] int32: bit t of row b allows token t (llguidance's layout);
    the logits are masked in place."""
    logits = logits.float().cpu()
    if bitmask is not None:
        apply_token_bitmask(logits, bitmask)
    tokens = logits.argmax(dim=-1).tolist()
    for row, state in enumerate(states):
        if not state.params.greedy:
            tokens[row] = int(select_next(logits[row : row + 1], state.params, state.generator))
    logprobs: list[TokenLogprob | None] = [None] * len(states)
    wanted = [row for row, state in enumerate(states) if state.num_logprobs is not None]
    if wanted:
        log_probs = logits[wanted].log_softmax(dim=-1)
        for i, row in enumerate(wanted):
            count = states[row].num_logprobs or 0
            top = log_probs[i].topk(count) if count else None
            alternatives = (
                list(zip(top.indices.tolist(), top.values.tolist(), strict=True))
                if top is not None
                else []
            )
            if bitmask is not None:  # fewer allowed tokens than asked for: no banned ones
                alternatives = [(t, v) for t, v in alternatives if v != float("-inf")]
            logprobs[row] = TokenLogprob(
                token_id=tokens[row],
                logprob=float(log_probs[i, tokens[row]]),
                top=alternatives,
            )
    return tokens, logprobs
