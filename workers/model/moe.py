"""The mixture-of-experts feed-forward layer: a top-k router and GLU experts as stacked weights.

Tokens are routed by sorting (token, slot) pairs by expert, so each expert that at least one
token chose runs one matmul over its contiguous slice of tokens — no per-token weight
gathering and no pass over experts that no token chose. Where torch provides
`_grouped_mm`, all hit experts run as one grouped matmul instead of a Python loop; on CPU in
fp32 each expert's matmuls run on oneDNN-packed weights (`workers.model.packed`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from workers.model.args import ModelArgs
from workers.model.packed import PackedWeights, packed_linear

ExpertMatmul = Callable[[int, torch.Tensor], torch.Tensor]


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


def grouped_mm_supported(x: torch.Tensor) -> bool:
    """Whether `torch._grouped_mm` takes these activations: present in this torch, CPU
    (fp32/bf16) or CUDA bf16 on sm90+, and 16-byte aligned rows."""
    if not hasattr(torch, "_grouped_mm") or (x.shape[-1] * x.element_size()) % 16:
        return False
    if x.device.type == "cpu":
        return True
    return x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device)[0] >= 9


class MoE(nn.Module):
    """GLU experts: expert e computes (silu(x w1_eᵀ) * (x v1_eᵀ)) w2_e."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_experts = args.n_experts
        self.hidden = args.ffn_hidden_size
        self.router = Router(args)
        # w1 (gate) and v1 (up) packed once at load as [E, 2F, D]: one matmul gives both.
        self.w13 = nn.Parameter(torch.empty(args.n_experts, 2 * args.ffn_hidden_size, args.d_model))
        self.w2 = nn.Parameter(torch.empty(args.n_experts, args.ffn_hidden_size, args.d_model))
        # None picks per call: grouped on CUDA (one launch for all experts); on CPU the
        # per-expert loop measured as fast at decode and ~20% faster at prefill.
        self.use_grouped_mm: bool | None = None
        # Up to this many rows per expert, with every expert hit, use one padded bmm.
        self.padded_max_rows = 16
        self.packed_weights = PackedWeights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, D] -> [N, D]."""
        weights, experts = self.router(x)  # [N, k]
        top_k = experts.shape[1]
        flat_experts = experts.flatten()  # [N*k], slot s belongs to token s // k
        order = flat_experts.argsort(stable=True)
        token_of_slot = order // top_k
        counts = torch.bincount(flat_experts, minlength=self.n_experts)
        routed = x[token_of_slot]  # tokens (not weights) gathered in expert order [N*k, D]

        grouped = self.use_grouped_mm
        if grouped is None:
            grouped = x.device.type == "cuda"
        if grouped and grouped_mm_supported(x) and len(x) > 1:
            out = self._grouped(routed, counts)
        elif self.packed_weights.usable(self.w13, x):
            out = self._looped(routed, counts)  # packed per-expert matmuls beat the padded bmm
        elif self._use_padded(counts):
            out = self._padded(routed, counts, flat_experts[order])
        else:
            out = self._looped(routed, counts)
        out = out * weights.flatten()[order].unsqueeze(-1)
        return torch.zeros_like(x).index_add_(0, token_of_slot, out)

    def _glu(self, h13: torch.Tensor) -> torch.Tensor:
        gate, up = h13.split(self.hidden, dim=-1)
        return F.silu(gate) * up

    def _looped(self, routed: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        gate_up, down = self._expert_matmuls(routed)
        out = torch.empty_like(routed)
        start = 0
        for expert, count in enumerate(counts.tolist()):
            if count == 0:
                continue
            end = start + count
            h = self._glu(gate_up(expert, routed[start:end]))  # [n_e, F]
            out[start:end] = down(expert, h)
            start = end
        return out

    def _expert_matmuls(self, routed: torch.Tensor) -> tuple[ExpertMatmul, ExpertMatmul]:
        """(expert, rows [n, D]) -> rows @ w13[expert]ᵀ [n, 2F], and (expert, h [n, F]) ->
        h @ w2[expert] [n, D]: on packed copies where they apply, else plain matmuls."""
        if not self.packed_weights.usable(self.w13, routed):
            return (lambda e, rows: rows @ self.w13[e].T), (lambda e, h: h @ self.w2[e])
        w13, w2 = self._packed_experts()
        return (lambda e, rows: packed_linear(rows, w13[e])), (lambda e, h: packed_linear(h, w2[e]))

    def _packed_experts(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-expert packed [2F, D] gate|up and [D, F] down matrices."""
        w13 = self.packed_weights.stack("w13", self.w13, lambda w: list(w))
        w2 = self.packed_weights.stack("w2", self.w2, lambda w: [m.T for m in w])
        return w13, w2

    def prepack_weights(self) -> None:
        if self.packed_weights.usable(self.w13):
            self._packed_experts()

    def _use_padded(self, counts: torch.Tensor) -> bool:
        """Few tokens per expert, nearly every expert hit (decode of a batch): one padded bmm
        per projection beats a loop of tiny matmuls on CPU (measured ~1.5x at 4 rows per
        expert) even though it also streams the weights of up to a quarter of the experts
        that no token chose (their rows are zeros and are never gathered back). With more
        idle experts the loop wins: it never reads their weights."""
        if self.padded_max_rows == 0:
            return False
        idle = int((counts == 0).sum())
        return 4 * idle <= self.n_experts and int(counts.max()) <= self.padded_max_rows

    def _padded(
        self, routed: torch.Tensor, counts: torch.Tensor, slot_experts: torch.Tensor
    ) -> torch.Tensor:
        width = int(counts.max())
        starts = counts.cumsum(0) - counts
        row = torch.arange(len(routed), device=routed.device) - starts[slot_experts]
        padded = routed.new_zeros(self.n_experts, width, routed.shape[-1])
        padded[slot_experts, row] = routed
        h = self._glu(torch.bmm(padded, self.w13.transpose(1, 2)))  # [E, width, F]
        return torch.bmm(h, self.w2)[slot_experts, row]

    def _grouped(self, routed: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        offsets = counts.cumsum(0).to(torch.int32)
        h = self._glu(torch._grouped_mm(routed, self.w13.transpose(1, 2), offs=offsets))
        return torch._grouped_mm(h, self.w2, offs=offsets)
