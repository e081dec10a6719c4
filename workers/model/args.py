"""`ModelArgs`: the one typed description of an MoE transformer, shared by DBRX and Mixtral.

The two families differ only in a handful of switches (norm kind, clip_qkv, routing p-norm,
RoPE base); everything else — GQA attention, top-k routing, GLU experts — is the same math.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

Family = Literal["dbrx", "mixtral"]
NormKind = Literal["layernorm", "rmsnorm"]


@dataclass(frozen=True)
class ModelArgs:
    family: Family
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_hidden_size: int  # per expert
    n_experts: int
    top_k: int
    max_seq_len: int
    rope_theta: float
    norm: NormKind
    norm_eps: float = 1e-5
    clip_qkv: float | None = None
    # Router weights are divided by their p-norm; None leaves them as softmax outputs.
    router_norm_p: float | None = 1.0
    sliding_window: int | None = None
    tie_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.n_heads % self.n_kv_heads:
            problems.append(
                f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})"
            )
        if self.head_dim % 2:
            problems.append(f"head_dim ({self.head_dim}) must be even for rotary embeddings")
        if not 1 <= self.top_k <= self.n_experts:
            problems.append(
                f"top_k ({self.top_k}) must be between 1 and n_experts ({self.n_experts})"
            )
        if self.clip_qkv is not None and self.clip_qkv <= 0:
            problems.append(f"clip_qkv ({self.clip_qkv}) must be positive or None")
        if problems:
            raise ValueError("invalid model args: " + "; ".join(problems))

    @property
    def q_size(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.n_kv_heads * self.head_dim

    def replace(self, **changes: object) -> ModelArgs:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def parameter_count(self) -> int:
        """Total parameters (all experts), as stored in a checkpoint."""
        d, f, e = self.d_model, self.ffn_hidden_size, self.n_experts
        attn = d * (self.q_size + 2 * self.kv_size) + self.q_size * d
        moe = e * d + 3 * e * f * d
        norms = 2 * d
        embeddings = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.n_layers * (attn + moe + norms) + d + embeddings

    def active_parameter_count(self) -> int:
        """Parameters one token computes with: top_k experts per layer, and the LM head but
        not the input embedding table (a lookup reads one row). DBRX: 35.85 B."""
        inactive = self.n_layers * 3 * (self.n_experts - self.top_k) * self.ffn_hidden_size
        lookup_only = 0 if self.tie_embeddings else self.vocab_size
        return self.parameter_count() - (inactive + lookup_only) * self.d_model

    def kv_bytes_per_token(self, bytes_per_element: int) -> int:
        return 2 * self.n_layers * self.kv_size * bytes_per_element
