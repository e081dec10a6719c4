"""How attention reaches its keys and values, passed explicitly into every forward call.

The model computes q/k/v for the new tokens; an `AttentionContext` stores k/v wherever its
cache keeps them and returns the attention output. `CausalAttention` (no cache or a
contiguous `KVCache`) serves static batches; the engine's paged cache implements the same
protocol (`workers.engine.paged_attention`). No global state: each call gets its own context.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from workers.model.kv_cache import KVCache


class AttentionContext(Protocol):
    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [B, H, T, Hd], k/v [B, K, T, Hd] for the new tokens -> output [B, H, T, Hd]."""
        ...


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
