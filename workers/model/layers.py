"""Building blocks of the MoE transformer: norms, rotary embeddings, GQA attention.

Shape keys used in comments throughout `workers.model`:
    B batch, T new tokens in this call, S = cached + new positions, D d_model,
    H query heads, K kv heads, Hd head_dim, E experts, F expert hidden size,
    N = B*T flattened tokens, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workers.model.args import ModelArgs, NormKind
from workers.model.attention_context import AttentionContext
from workers.model.packed import PackedWeights


class Norm(nn.Module):
    """Weight-only LayerNorm (DBRX) or RMSNorm (Mixtral), numerically as in the references."""

    def __init__(self, dim: int, kind: NormKind, eps: float) -> None:
        super().__init__()
        self.kind = kind
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "layernorm":
            return F.layer_norm(x, (x.shape[-1],), self.weight, None, self.eps)
        # RMSNorm statistics in fp32 so bf16 activations do not lose the scale.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotary_tables(
    args: ModelArgs, positions: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [B, T, Hd] for `positions` [B, T]; frequencies computed in fp32."""
    half = torch.arange(0, args.head_dim, 2, device=positions.device, dtype=torch.float32)
    inv_freq = 1.0 / (args.rope_theta ** (half / args.head_dim))
    freqs = positions.float()[..., None] * inv_freq  # [B, T, Hd/2]
    angles = torch.cat((freqs, freqs), dim=-1)  # rotate-half (GPT-NeoX) layout
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, T, Hd]; cos/sin [B, T, Hd]."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + _rotate_half(x) * sin


class Attention(nn.Module):
    """Grouped-query attention with a fused q|k|v projection and optional clip_qkv.

    Where keys and values live (a contiguous cache, a paged cache, none) is the business of
    the `AttentionContext` passed in. Head counts are attributes, not read from `args`, so a
    tensor-parallel shard can hold a slice of the heads (`workers.parallel`).
    """

    def __init__(self, args: ModelArgs, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.head_dim = args.head_dim
        self.n_heads = args.n_heads
        self.n_kv_heads = args.n_kv_heads
        self.clip_qkv = args.clip_qkv
        self.wqkv = nn.Linear(args.d_model, args.q_size + 2 * args.kv_size, bias=False)
        self.wo = nn.Linear(args.q_size, args.d_model, bias=False)
        self.packed_weights = PackedWeights()

    def prepack_weights(self) -> None:
        for name, weight in (("wqkv", self.wqkv.weight), ("wo", self.wo.weight)):
            if self.packed_weights.usable(weight):
                self.packed_weights.matrix(name, weight)

    def forward(
        self,
        x: torch.Tensor,  # [B, T, D]
        cos: torch.Tensor,
        sin: torch.Tensor,
        context: AttentionContext,
    ) -> torch.Tensor:
        bsz, seqlen, _ = x.shape
        q_size = self.n_heads * self.head_dim
        kv_size = self.n_kv_heads * self.head_dim
        qkv = self.packed_weights.linear("wqkv", x, self.wqkv.weight)
        if self.clip_qkv is not None:
            qkv = qkv.clamp(-self.clip_qkv, self.clip_qkv)
        q, k, v = qkv.split((q_size, kv_size, kv_size), dim=-1)
        q = q.view(bsz, seqlen, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, Hd]
        k = k.view(bsz, seqlen, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, K, T, Hd]
        v = v.view(bsz, seqlen, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        out = context.attend(self.layer_id, q, k, v)  # [B, H, T, Hd]
        out = out.transpose(1, 2).reshape(bsz, seqlen, q_size)
        return self.packed_weights.linear("wo", out, self.wo.weight)


def vocab_chunks(vocab_size: int, rows_per_chunk: int = 2048) -> int:
    """How many equal slices of about `rows_per_chunk` rows the LM head splits into (1: none)."""
    for count in range(vocab_size // rows_per_chunk, 1, -1):
        if vocab_size % count == 0:
            return count
    return 1


def lm_head(x: torch.Tensor, weight: torch.Tensor, chunks: int) -> torch.Tensor:
    """x [..., D] @ weight[V, D]ᵀ -> [..., V].

    Where packed weights do not apply (`workers.model.packed`: other dtypes, gradients), a
    batched matmul over `chunks` vocabulary slices of ~2048 rows runs 1.2-1.8x faster on
    CPU than one [N, D] x [D, V] matmul at decode batch sizes (measured, 100352 x 512,
    batches 1-64) and gives the same numbers: each slice's weights stay in cache while all
    rows use them. GPUs take the plain matmul.
    """
    if chunks == 1 or x.device.type != "cpu":
        return F.linear(x, weight)
    rows = x.reshape(-1, x.shape[-1])
    slices = weight.view(chunks, -1, weight.shape[-1]).transpose(1, 2)  # [C, D, V/C]
    out = torch.bmm(rows.expand(chunks, *rows.shape), slices)  # [C, N, V/C]
    return out.transpose(0, 1).reshape(*x.shape[:-1], weight.shape[0])
