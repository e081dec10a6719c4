"""Building blocks of the MoE transformer: norms, rotary embeddings, GQA attention, and where
attention finds its keys and values.

Shape keys used in comments throughout `workers.model`:
    B batch, T new tokens in this call, S = cached + new positions, D d_model,
    H query heads, K kv heads, Hd head_dim, E experts, F expert hidden size,
    N = B*T flattened tokens, V vocabulary.

Attention computes q/k/v for the new tokens and hands them to an `AttentionContext`, passed
explicitly into every forward call: `CausalAttention` (no cache, or a contiguous `KVCache`)
serves static batches; the engine's paged cache implements the same protocol
(`workers.engine.paged_attention`). No global state.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from workers.model.args import ModelArgs, NormKind


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
    tensor-parallel shard can hold a slice of the heads (`workers.parallel`). `wqkv` and
    `wo` are linear layers: plain, or faster ones swapped in at load (`kernels`).
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
        qkv = self.wqkv(x)
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
        return self.wo(out)


# -- where keys and values live -------------------------------------------------------------
class AttentionContext(Protocol):
    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [B, H, T, Hd], k/v [B, K, T, Hd] for the new tokens -> output [B, H, T, Hd]."""
        ...


class KVCache:
    """A contiguous per-batch cache for incremental decoding: every sequence of the batch
    shares one write position, which is what a static batch needs (`workers.generate`,
    `workers.bench`). The engine uses a paged cache instead."""

    def __init__(
        self,
        *,
        n_layers: int,
        batch_size: int,
        n_kv_heads: int,
        head_dim: int,
        capacity: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        shape = (n_layers, batch_size, n_kv_heads, capacity, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.capacity = capacity
        self.length = 0  # positions already written by completed forward passes

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v [B, K, T, Hd] after the cached prefix; return [B, K, length+T, Hd] views."""
        end = self.length + k.shape[2]
        if end > self.capacity:
            raise ValueError(
                f"KV cache holds {self.capacity} positions; this step needs {end}. "
                "Create the cache with a larger capacity (prompt + max new tokens)."
            )
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self, count: int) -> None:
        self.length += count

    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes


def attention_mask(
    query_positions: torch.Tensor, key_count: int, sliding_window: int | None
) -> torch.Tensor:
    """Boolean mask [B, 1, T, S]: True where a query may attend to a key position.

    Key index j holds absolute position j (the cache is filled from position 0).
    """
    keys = torch.arange(key_count, device=query_positions.device)
    queries = query_positions[:, None, :, None]  # [B, 1, T, 1]
    allowed = keys <= queries
    if sliding_window is not None:
        allowed &= keys > queries - sliding_window
    return allowed


class CausalAttention:
    """Causal self-attention over a static batch, optionally through a contiguous cache."""

    def __init__(
        self, positions: torch.Tensor, cache: KVCache | None, sliding_window: int | None
    ) -> None:
        self.positions = positions  # [B, T]
        self.cache = cache
        self.sliding_window = sliding_window

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        seqlen = q.shape[2]
        if self.cache is not None:
            k, v = self.cache.update(layer, k, v)  # [B, K, S, Hd]
        key_count = k.shape[2]
        window = self.sliding_window
        # Causal alignment of SDPA's is_causal is top-left, right only when no keys are cached.
        needs_mask = (seqlen > 1 and key_count != seqlen) or (
            window is not None and key_count > window
        )
        mask = attention_mask(self.positions, key_count, window) if needs_mask else None
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=not needs_mask and seqlen > 1,
            enable_gqa=k.shape[1] != q.shape[1],
        )
