"""One sequence's bookkeeping: its tokens, how many have KV entries, and its block table.

Plain Python, no tensors: the scheduler and block manager reason about sequences without
touching the model, and are unit-tested alone.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # not holding KV blocks (new, or preempted for recompute)
    RUNNING = "running"  # holds blocks; prefilling in chunks or decoding
    FINISHED = "finished"


_ids = itertools.count()


@dataclass(eq=False)
class Sequence:
    """Tokens are the prompt followed by the generated tokens.

    `num_computed_tokens` of them have keys/values in the cache (prefix-cache hits count);
    the next step computes tokens from there on. Token i lives in slot i % block_size of
    block `block_table[i // block_size]`.
    """

    prompt_token_ids: list[int]
    max_tokens: int
    seq_id: int = field(default_factory=lambda: next(_ids))
    output_token_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache at admission
    block_table: list[int] = field(default_factory=list)
    num_preemptions: int = 0

    def __post_init__(self) -> None:
        if not self.prompt_token_ids:
            raise ValueError("a sequence needs at least one prompt token")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def __len__(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self) - self.num_computed_tokens

    def tokens_between(self, start: int, end: int) -> list[int]:
        prompt = self.prompt_token_ids
        if end <= len(prompt):
            return prompt[start:end]
        return self.token_ids[start:end]

    def blocks_needed(self, num_tokens: int, block_size: int) -> int:
        """Blocks that hold the first `num_tokens` tokens."""
        return -(-num_tokens // block_size)
