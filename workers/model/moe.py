"""The mixture-of-experts feed-forward layer: a top-k router and GLU experts as stacked weights.

Tokens are routed by sorting (token, slot) pairs by expert, so each expert that at least one
token chose runs one matmul over its contiguous slice of tokens — no per-token weight
gathering and no pass over experts that no token chose. How the hit experts' matmuls run is
the layer's `experts` kernel, chosen once when the model is loaded (`kernels`): the loop
below (the reference), one grouped matmul for all experts (CUDA), or oneDNN-packed weights
(CPU fp32). Every kernel computes the same GLU: expert e maps rows x to
(silu(x w1_eᵀ) * (x v1_eᵀ)) w2_e, with w1 (gate) and v1 (up) packed at load as `w13`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from workers.model.args import ModelArgs


class Router(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.top_k = args.top_k
        self.norm_p = args.router_norm_p
        self.weight = nn.Parameter(torch.empty(args.n_experts, args.d_model))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, D] -> (weights [N, k] in x's dtype, expert ids [N, k])."""
        probs = F.linear(x, self.weight).float().softmax(dim=-1)  # [N, E], fp32
        weights, experts = probs.topk(self.top_k, dim=-1)
        if self.norm_p is not None:
            weights = weights / weights.norm(p=self.norm_p, dim=-1, keepdim=True)
        return weights.to(x.dtype), experts


class ExpertKernel(Protocol):
    def __call__(self, moe: MoE, routed: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """routed [M, D] (rows sorted by expert), counts [E] rows per expert -> [M, D]."""
        ...


def glu(h13: torch.Tensor, hidden: int) -> torch.Tensor:
    """silu(gate) * up of the [n, 2F] gate|up projection."""
    gate, up = h13.split(hidden, dim=-1)
    return F.silu(gate) * up


Projection = Callable[[torch.Tensor, int], torch.Tensor]  # (rows, expert) -> rows @ W_expert


def each_hit_expert(
    moe: MoE, routed: torch.Tensor, counts: torch.Tensor, up: Projection, down: Projection
) -> torch.Tensor:
    """The GLU of every hit expert over its contiguous rows, with the given gate|up and down
    projections; experts with no rows are never read."""
    out = torch.empty_like(routed)
    start = 0
    for expert, count in enumerate(counts.tolist()):
        if count == 0:
            continue
        end = start + count
        h = glu(up(routed[start:end], expert), moe.hidden)  # [n_e, F]
        out[start:end] = down(h, expert)
        start = end
    return out


def looped_experts(moe: MoE, routed: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """One plain matmul pair per hit expert (the reference kernel)."""
    return each_hit_expert(
        moe,
        routed,
        counts,
        up=lambda x, expert: x @ moe.w13[expert].T,
        down=lambda h, expert: h @ moe.w2[expert],
    )


class MoE(nn.Module):
    """GLU experts `w13` [E, 2F, D] (gate|up) and `w2` [E, F, D] behind a top-k router."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_experts = args.n_experts
        self.hidden = args.ffn_hidden_size
        self.router = Router(args)
        self.w13 = nn.Parameter(torch.empty(args.n_experts, 2 * args.ffn_hidden_size, args.d_model))
        self.w2 = nn.Parameter(torch.empty(args.n_experts, args.ffn_hidden_size, args.d_model))
        self.experts: ExpertKernel = looped_experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, D] -> [N, D]."""
        weights, experts = self.router(x)  # [N, k]
        top_k = experts.shape[1]
        flat_experts = experts.flatten()  # [N*k], slot s belongs to token s // k
        order = flat_experts.argsort(stable=True)
        token_of_slot = order // top_k
        counts = torch.bincount(flat_experts, minlength=self.n_experts)
        routed = x[token_of_slot]  # tokens (not weights) gathered in expert order [N*k, D]
        out = self.experts(self, routed, counts)
        out = out * weights.flatten()[order].unsqueeze(-1)
        return torch.zeros_like(x).index_add_(0, token_of_slot, out)
