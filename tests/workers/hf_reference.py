"""Random Hugging Face DBRX / Mixtral checkpoints: the correctness anchor for the model code.

Weights are drawn wider than HF's default init (normal(0, 0.08)), so routing is far from
uniform and a routing or layout bug changes the logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class RefShape:
    family: str
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    n_experts: int = 8
    top_k: int = 2
    ffn: int = 48
    clip_qkv: float = 8.0
    norm_p: float = 1.0
    vocab: int = 512

    def label(self) -> str:
        extra = f"-clip{self.clip_qkv:g}-p{self.norm_p:g}" if self.family == "dbrx" else ""
        return (
            f"{self.family}-h{self.n_heads}kv{self.n_kv_heads}-e{self.n_experts}"
            f"k{self.top_k}{extra}"
        )


def hf_model(shape: RefShape, seed: int = 0) -> Any:
    import transformers

    torch.manual_seed(seed)
    config: Any
    model: Any
    if shape.family == "dbrx":
        config = transformers.DbrxConfig(
            d_model=shape.d_model,
            n_heads=shape.n_heads,
            n_layers=shape.n_layers,
            vocab_size=shape.vocab,
            max_seq_len=256,
            attn_config={
                "kv_n_heads": shape.n_kv_heads,
                "clip_qkv": shape.clip_qkv,
                "rope_theta": 500000.0,
            },
            ffn_config={
                "ffn_hidden_size": shape.ffn,
                "moe_num_experts": shape.n_experts,
                "moe_top_k": shape.top_k,
                "moe_normalize_expert_weights": shape.norm_p,
            },
        )
        model = transformers.DbrxForCausalLM(config)
    else:
        config = transformers.MixtralConfig(
            hidden_size=shape.d_model,
            num_attention_heads=shape.n_heads,
            num_key_value_heads=shape.n_kv_heads,
            num_hidden_layers=shape.n_layers,
            vocab_size=shape.vocab,
            intermediate_size=shape.ffn,
            num_local_experts=shape.n_experts,
            num_experts_per_tok=shape.top_k,
            max_position_embeddings=256,
        )
        model = transformers.MixtralForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            else:
                param.normal_(0.0, 0.08)
    return model.eval()


def save_hf(shape: RefShape, directory: Path, seed: int = 0) -> Any:
    model = hf_model(shape, seed)
    model.save_pretrained(directory)
    return model


@torch.no_grad()
def hf_greedy(
    model: Any, prompt: torch.Tensor, new_tokens: int
) -> tuple[list[list[int]], torch.Tensor]:
    """transformers' greedy tokens [B][new_tokens] and the logits it picked them from
    [B, new_tokens, V] (its cached decode's own numbers)."""
    out = model.generate(
        prompt,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        attention_mask=torch.ones_like(prompt),
        output_logits=True,
        return_dict_in_generate=True,
    )
    return out.sequences[:, prompt.shape[1] :].tolist(), torch.stack(out.logits, dim=1)
