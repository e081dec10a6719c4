"""The MoE transformer shared by DBRX and Mixtral, in reading order.

Block: h = x + attn(norm_1(x)); y = h + moe(norm_2(h)). Final norm, then the LM head.
Checkpoint renaming lives in `hf_format.py`, faster matmul kernels in `kernels.py` (swapped
in at load), never here.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from workers.model.args import ModelArgs
from workers.model.layers import (
    Attention,
    AttentionContext,
    CausalAttention,
    KVCache,
    Norm,
    rotary_tables,
)
from workers.model.moe import MoE


class Block(nn.Module):
    def __init__(self, args: ModelArgs, layer_id: int) -> None:
        super().__init__()
        self.attention_norm = Norm(args.d_model, args.norm, args.norm_eps)
        self.attention = Attention(args, layer_id)
        self.ffn_norm = Norm(args.d_model, args.norm, args.norm_eps)
        self.moe = MoE(args)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        context: AttentionContext,
    ) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, context)
        flat = self.ffn_norm(h).view(-1, h.shape[-1])
        return h + self.moe(flat).view_as(h)


class MoETransformer(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.d_model)
        self.layers = nn.ModuleList(Block(args, i) for i in range(args.n_layers))
        self.norm = Norm(args.d_model, args.norm, args.norm_eps)
        self.output = nn.Linear(args.d_model, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, T]
        *,
        cache: KVCache | None = None,
        last_logits_only: bool = False,
    ) -> torch.Tensor:
        """Logits [B, T, V] (or [B, 1, V] with `last_logits_only`).

        With a cache, the new tokens continue the cached positions and their keys/values are
        appended; without one the call is a plain causal forward over `input_ids`.
        """
        x = self.causal_hidden_states(input_ids, cache=cache)
        if last_logits_only:
            x = x[:, -1:]
        return self.logits(x)

    def causal_hidden_states(
        self,
        input_ids: torch.Tensor,  # [B, T]
        *,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states [B, T, D] of the causal forward that `forward` runs.

        Embeddings pool these (no cache needed); `forward` turns them into logits.
        """
        bsz, seqlen = input_ids.shape
        start = cache.length if cache is not None else 0
        if start + seqlen > self.args.max_seq_len:
            raise ValueError(
                f"{start + seqlen} positions exceed the model's context of "
                f"{self.args.max_seq_len} tokens"
            )
        positions = torch.arange(start, start + seqlen, device=input_ids.device)
        positions = positions.unsqueeze(0).expand(bsz, seqlen)
        context = CausalAttention(positions, cache, self.args.sliding_window)
        x = self.hidden_states(input_ids, positions, context)
        if cache is not None:
            cache.advance(seqlen)
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states [..., D] -> logits [..., V]."""
        return self.output(hidden)

    def hidden_states(
        self,
        input_ids: torch.Tensor,  # [B, T]
        positions: torch.Tensor,  # [B, T] absolute positions, for RoPE
        context: AttentionContext,
    ) -> torch.Tensor:
        """Final-norm hidden states [B, T, D]; `self.logits` turns them into logits.

        The engine calls this with all scheduled tokens flattened into one row (B = 1) and a
        paged `context` that knows which tokens belong to which sequence.
        """
        x = self.tok_embeddings(input_ids)
        cos, sin = rotary_tables(self.args, positions, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, context)
        return self.norm(x)

    def block(self, index: int) -> Block:
        return cast(Block, self.layers[index])

    def new_cache(self, batch_size: int, capacity: int) -> KVCache:
        weight = self.output.weight
        return KVCache(
            n_layers=self.args.n_layers,
            batch_size=batch_size,
            # The layer's own count: a tensor-parallel shard caches only its kv heads.
            n_kv_heads=self.block(0).attention.n_kv_heads,
            head_dim=self.args.head_dim,
            capacity=min(capacity, self.args.max_seq_len),
            device=weight.device,
            dtype=weight.dtype,
        )
