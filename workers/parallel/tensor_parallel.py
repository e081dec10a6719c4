"""Tensor parallelism (Megatron style): every rank holds a slice of every block's heads and of
every expert's hidden units, and one all-reduce per sub-layer sums the partial outputs.

Attention keeps its rank's query heads and the kv heads they read (each rank attends on its
own, with its own KV cache); `wo` keeps the matching input columns, so its output is a
partial sum over heads. The MoE keeps the router whole and the rank's F/world slice of each
expert's gate, up and down projections, so its output is a partial sum over hidden units.

The shards are subclasses of `Attention` and `MoE` holding parameters under the same names,
so `model.block(i).attention.n_kv_heads` is the local count and a shard's state dict reads
like the full model's.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import ProcessGroup

from workers.model.args import ModelArgs
from workers.model.layers import Attention, AttentionContext
from workers.model.moe import MoE


def owned_parameter(like: torch.Tensor, *pieces: torch.Tensor, dim: int = 0) -> nn.Parameter:
    """A parameter with its own memory holding `pieces` concatenated along `dim` — never a
    view of the full weight, so the full weight is freed once the model drops it."""
    data = torch.cat([piece.detach() for piece in pieces], dim=dim)  # cat always copies
    return nn.Parameter(data, requires_grad=like.requires_grad)


class TensorParallelAttention(Attention):
    """One rank's heads of an `Attention`; the output is all-reduced over `group`."""

    def __init__(
        self,
        full: Attention,
        args: ModelArgs,
        rank: int,
        world_size: int,
        group: ProcessGroup | None,
    ) -> None:
        local_args = args.replace(
            n_heads=full.n_heads // world_size, n_kv_heads=full.n_kv_heads // world_size
        )
        # Shapes only: the real (sliced) weights are assigned below.
        with torch.device("meta"):
            super().__init__(local_args, full.layer_id)
        self.group = group
        head_dim = full.head_dim
        q_rows, kv_rows = self.n_heads * head_dim, self.n_kv_heads * head_dim
        q_start = rank * q_rows
        k_start = full.n_heads * head_dim + rank * kv_rows
        v_start = (full.n_heads + full.n_kv_heads) * head_dim + rank * kv_rows
        weight = full.wqkv.weight  # rows: [q (H*Hd) | k (K*Hd) | v (K*Hd)]
        self.wqkv.weight = owned_parameter(
            weight,
            weight[q_start : q_start + q_rows],
            weight[k_start : k_start + kv_rows],
            weight[v_start : v_start + kv_rows],
        )
        # wo's input columns are the concatenated head outputs, in head order.
        self.wo.weight = owned_parameter(
            full.wo.weight, full.wo.weight[:, q_start : q_start + q_rows], dim=1
        )

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        context: AttentionContext,
    ) -> torch.Tensor:
        out = super().forward(x, cos, sin, context)  # partial sum over this rank's heads
        dist.all_reduce(out, group=self.group)
        return out


class TensorParallelMoE(MoE):
    """Every expert's hidden units [rank*F/W, (rank+1)*F/W); router replicated; the output
    is all-reduced over `group`."""

    def __init__(
        self,
        full: MoE,
        args: ModelArgs,
        rank: int,
        world_size: int,
        group: ProcessGroup | None,
    ) -> None:
        local_hidden = full.hidden // world_size
        with torch.device("meta"):
            super().__init__(args.replace(ffn_hidden_size=local_hidden))
        self.group = group
        self.router = full.router
        start, stop = rank * local_hidden, (rank + 1) * local_hidden
        gate = full.w13[:, start:stop]  # w13 rows: gate [0, F) then up [F, 2F)
        up = full.w13[:, full.hidden + start : full.hidden + stop]
        self.w13 = owned_parameter(full.w13, gate, up, dim=1)  # [E, 2F/W, D]
        self.w2 = owned_parameter(full.w2, full.w2[:, start:stop], dim=1)  # [E, F/W, D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)  # partial sum over this rank's hidden units
        dist.all_reduce(out, group=self.group)
        return out
