"""Runs one engine step on a model shard: flattened tokens in, last-token logits out.

It also embeds one token list (`embed`: a causal forward without the paged cache, pooled by
`workers.engine.embedding.mean_pool`).

`StepInput` is plain data so the driver can send the same step to every rank of a sharded
replica; each rank owns a `ModelRunner` with its model shard and its own paged cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from workers.engine.embedding import mean_pool
from workers.engine.paged_attention import (
    PagedAttention,
    PagedKVCache,
    SequenceChunk,
    build_paged_batch,
)
from workers.model.kernels import use_fast_kernels
from workers.model.transformer import MoETransformer


@dataclass(frozen=True)
class StepInput:
    token_ids: list[int]  # every scheduled token, sequence after sequence
    positions: list[int]
    chunks: list[SequenceChunk]
    sample_rows: list[int]  # offsets of the tokens whose next-token logits are wanted


class Executor(Protocol):
    """Runs steps on one device or on every rank of a sharded replica."""

    @property
    def block_size(self) -> int: ...

    @property
    def num_blocks(self) -> int: ...

    def execute(self, step: StepInput) -> torch.Tensor:
        """Logits [len(step.sample_rows), V] (fp32, on CPU)."""
        ...

    def embed(self, token_ids: list[int]) -> torch.Tensor:
        """The unit-length mean of the final hidden states [D] (fp32, on CPU)."""
        ...

    def shutdown(self) -> None: ...


class ModelRunner:
    def __init__(self, model: MoETransformer, *, num_blocks: int, block_size: int) -> None:
        self.model = model
        use_fast_kernels(model)  # a shard's new layers too; CPU fp32 packs its weights now
        weight = model.output.weight
        self.device = weight.device
        self.cache = PagedKVCache(
            n_layers=model.args.n_layers,
            num_blocks=num_blocks,
            block_size=block_size,
            n_kv_heads=model.block(0).attention.n_kv_heads,  # per-rank count when sharded
            head_dim=model.args.head_dim,
            device=self.device,
            dtype=weight.dtype,
        )

    @torch.inference_mode()
    def execute(self, step: StepInput) -> torch.Tensor:
        device = self.device
        batch = build_paged_batch(
            step.chunks,
            block_size=self.cache.block_size,
            sliding_window=self.model.args.sliding_window,
            device=device,
        )
        ids = torch.tensor(step.token_ids, device=device).unsqueeze(0)  # [1, N]
        positions = torch.tensor(step.positions, device=device).unsqueeze(0)
        hidden = self.model.hidden_states(ids, positions, PagedAttention(self.cache, batch))
        rows = torch.tensor(step.sample_rows, device=device)
        return self.model.logits(hidden[0, rows]).float().cpu()

    @torch.inference_mode()
    def embed(self, token_ids: list[int]) -> torch.Tensor:
        ids = torch.tensor(token_ids, device=self.device).unsqueeze(0)  # [1, T]
        return mean_pool(self.model.causal_hidden_states(ids)[0])


class LocalExecutor:
    """The whole model in this process, on one device."""

    def __init__(self, model: MoETransformer, *, num_blocks: int, block_size: int) -> None:
        self.runner = ModelRunner(model, num_blocks=num_blocks, block_size=block_size)

    @property
    def block_size(self) -> int:
        return self.runner.cache.block_size

    @property
    def num_blocks(self) -> int:
        return self.runner.cache.num_blocks

    def execute(self, step: StepInput) -> torch.Tensor:
        return self.runner.execute(step)

    def embed(self, token_ids: list[int]) -> torch.Tensor:
        return self.runner.embed(token_ids)

    def shutdown(self) -> None:
        pass
