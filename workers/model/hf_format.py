"""Hugging Face checkpoint format: config.json <-> `ModelArgs`, HF tensor names <-> ours.

Kept out of the model file on purpose: the model knows one parameter layout (fused q|k|v,
experts stacked as `w13` [E, 2F, D] and `w2` [E, F, D]); this module knows every layout
a checkpoint may arrive in and how to pack it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from workers.model.args import ModelArgs

SUPPORTED_MODEL_TYPES = ("dbrx", "mixtral")
# Buffers some older checkpoints carry that hold nothing we need.
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


class CheckpointError(ValueError):
    """A checkpoint that does not match what its config promises."""


def args_from_hf_config(config: dict[str, Any]) -> ModelArgs:
    model_type = config.get("model_type")
    if model_type == "dbrx":
        return _dbrx_args(config)
    if model_type == "mixtral":
        return _mixtral_args(config)
    raise CheckpointError(
        f"unsupported model_type {model_type!r} in config.json; "
        f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


def _rope_theta(config: dict[str, Any], *fallbacks: Any) -> float:
    params = config.get("rope_parameters") or {}
    for value in (params.get("rope_theta"), config.get("rope_theta"), *fallbacks):
        if value is not None:
            return float(value)
    raise CheckpointError("config.json names no rope_theta")


def _dbrx_args(config: dict[str, Any]) -> ModelArgs:
    attn, ffn = config.get("attn_config", {}), config.get("ffn_config", {})
    act = (ffn.get("ffn_act_fn") or {"name": "silu"}).get("name")
    if act != "silu":
        raise CheckpointError(f"DBRX ffn_act_fn {act!r} is not supported; only 'silu'")
    d_model, n_heads = int(config["d_model"]), int(config["n_heads"])
    return ModelArgs(
        family="dbrx",
        vocab_size=int(config["vocab_size"]),
        d_model=d_model,
        n_layers=int(config["n_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(attn.get("kv_n_heads", 1)),
        head_dim=d_model // n_heads,
        ffn_hidden_size=int(ffn["ffn_hidden_size"]),
        n_experts=int(ffn["moe_num_experts"]),
        top_k=int(ffn["moe_top_k"]),
        max_seq_len=int(config.get("max_seq_len", 2048)),
        rope_theta=_rope_theta(config, attn.get("rope_theta"), 10000.0),
        norm="layernorm",
        clip_qkv=attn.get("clip_qkv"),
        router_norm_p=ffn.get("moe_normalize_expert_weights", 1.0),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        bos_token_id=config.get("bos_token_id"),
        eos_token_id=config.get("eos_token_id"),
        pad_token_id=config.get("pad_token_id"),
    )


def _mixtral_args(config: dict[str, Any]) -> ModelArgs:
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(f"Mixtral hidden_act {act!r} is not supported; only 'silu'")
    hidden, n_heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    return ModelArgs(
        family="mixtral",
        vocab_size=int(config["vocab_size"]),
        d_model=hidden,
        n_layers=int(config["num_hidden_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(config.get("num_key_value_heads") or n_heads),
        head_dim=int(config.get("head_dim") or hidden // n_heads),
        ffn_hidden_size=int(config["intermediate_size"]),
        n_experts=int(config["num_local_experts"]),
        top_k=int(config["num_experts_per_tok"]),
        max_seq_len=int(config.get("max_position_embeddings", 32768)),
        rope_theta=_rope_theta(config, 1e6),
        norm="rmsnorm",
        norm_eps=float(config.get("rms_norm_eps", 1e-5)),
        router_norm_p=1.0,
        sliding_window=config.get("sliding_window"),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        bos_token_id=config.get("bos_token_id"),
        eos_token_id=config.get("eos_token_id"),
        pad_token_id=config.get("pad_token_id"),
    )


def hf_config_from_args(args: ModelArgs, dtype: torch.dtype) -> dict[str, Any]:
    common = {
        "vocab_size": args.vocab_size,
        "tie_word_embeddings": args.tie_embeddings,
        "bos_token_id": args.bos_token_id,
        "eos_token_id": args.eos_token_id,
        "pad_token_id": args.pad_token_id,
        "dtype": str(dtype).removeprefix("torch."),
        "rope_parameters": {"rope_theta": args.rope_theta, "rope_type": "default"},
    }
    if args.family == "dbrx":
        if args.head_dim * args.n_heads != args.d_model:
            raise CheckpointError("DBRX checkpoints require head_dim * n_heads == d_model")
        return {
            "model_type": "dbrx",
            "architectures": ["DbrxForCausalLM"],
            "d_model": args.d_model,
            "n_heads": args.n_heads,
            "n_layers": args.n_layers,
            "max_seq_len": args.max_seq_len,
            "attn_config": {
                "kv_n_heads": args.n_kv_heads,
                "clip_qkv": args.clip_qkv,
                "rope_theta": args.rope_theta,
            },
            "ffn_config": {
                "ffn_hidden_size": args.ffn_hidden_size,
                "moe_num_experts": args.n_experts,
                "moe_top_k": args.top_k,
                "moe_normalize_expert_weights": args.router_norm_p,
                "ffn_act_fn": {"name": "silu"},
            },
            **common,
        }
    return {
        "model_type": "mixtral",
        "architectures": ["MixtralForCausalLM"],
        "hidden_size": args.d_model,
        "intermediate_size": args.ffn_hidden_size,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads,
        "head_dim": args.head_dim,
        "num_local_experts": args.n_experts,
        "num_experts_per_tok": args.top_k,
        "max_position_embeddings": args.max_seq_len,
        "rms_norm_eps": args.norm_eps,
        "sliding_window": args.sliding_window,
        "hidden_act": "silu",
        **common,
    }


# --- tensors ------------------------------------------------------------------------------

Reader = Callable[[str, tuple[int, ...]], torch.Tensor]
"""Reads one HF tensor by name, checking it has the given shape (raises CheckpointError)."""


def hf_to_internal(
    args: ModelArgs, read: Reader, names: set[str]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield our (name, tensor) pairs, reading each HF tensor through `read` exactly once."""
    if args.family == "dbrx":
        yield from _dbrx_to_internal(args, read)
    else:
        yield from _mixtral_to_internal(args, read, names)


def _dbrx_to_internal(args: ModelArgs, read: Reader) -> Iterator[tuple[str, torch.Tensor]]:
    d, e, f = args.d_model, args.n_experts, args.ffn_hidden_size
    yield "tok_embeddings.weight", read("transformer.wte.weight", (args.vocab_size, d))
    for i in range(args.n_layers):
        src, dst = f"transformer.blocks.{i}", f"layers.{i}"
        attn = f"{src}.norm_attn_norm"
        yield f"{dst}.attention_norm.weight", read(f"{attn}.norm_1.weight", (d,))
        qkv_rows = args.q_size + 2 * args.kv_size
        yield f"{dst}.attention.wqkv.weight", read(f"{attn}.attn.Wqkv.weight", (qkv_rows, d))
        yield f"{dst}.attention.wo.weight", read(f"{attn}.attn.out_proj.weight", (d, args.q_size))
        yield f"{dst}.ffn_norm.weight", read(f"{attn}.norm_2.weight", (d,))
        yield f"{dst}.moe.router.weight", read(f"{src}.ffn.router.layer.weight", (e, d))
        mlp = f"{src}.ffn.experts.mlp"
        w1 = read(f"{mlp}.w1", (e * f, d)).view(e, f, d)
        v1 = read(f"{mlp}.v1", (e * f, d)).view(e, f, d)
        yield f"{dst}.moe.w13", torch.cat((w1, v1), dim=1)
        del w1, v1
        yield f"{dst}.moe.w2", read(f"{mlp}.w2", (e * f, d)).view(e, f, d)
    yield from _final(args, read, "transformer.norm_f.weight")


def _mixtral_to_internal(
    args: ModelArgs, read: Reader, names: set[str]
) -> Iterator[tuple[str, torch.Tensor]]:
    d, e, f = args.d_model, args.n_experts, args.ffn_hidden_size
    yield "tok_embeddings.weight", read("model.embed_tokens.weight", (args.vocab_size, d))
    for i in range(args.n_layers):
        src, dst = f"model.layers.{i}", f"layers.{i}"
        yield f"{dst}.attention_norm.weight", read(f"{src}.input_layernorm.weight", (d,))
        attn = f"{src}.self_attn"
        q = read(f"{attn}.q_proj.weight", (args.q_size, d))
        k = read(f"{attn}.k_proj.weight", (args.kv_size, d))
        v = read(f"{attn}.v_proj.weight", (args.kv_size, d))
        yield f"{dst}.attention.wqkv.weight", torch.cat((q, k, v), dim=0)
        del q, k, v
        yield f"{dst}.attention.wo.weight", read(f"{attn}.o_proj.weight", (d, args.q_size))
        yield f"{dst}.ffn_norm.weight", read(f"{src}.post_attention_layernorm.weight", (d,))
        fused = f"{src}.mlp.experts.gate_up_proj"
        if fused in names:  # transformers v5 layout
            yield f"{dst}.moe.router.weight", read(f"{src}.mlp.gate.weight", (e, d))
            yield f"{dst}.moe.w13", read(fused, (e, 2 * f, d))
            down = read(f"{src}.mlp.experts.down_proj", (e, d, f))
            yield f"{dst}.moe.w2", down.transpose(1, 2).contiguous()
            continue
        moe = f"{src}.block_sparse_moe"
        yield f"{dst}.moe.router.weight", read(f"{moe}.gate.weight", (e, d))
        w13 = [
            torch.cat(
                (
                    read(f"{moe}.experts.{x}.w1.weight", (f, d)),
                    read(f"{moe}.experts.{x}.w3.weight", (f, d)),
                )
            )
            for x in range(e)
        ]
        yield f"{dst}.moe.w13", torch.stack(w13)
        del w13
        w2 = [read(f"{moe}.experts.{x}.w2.weight", (d, f)).T for x in range(e)]
        yield f"{dst}.moe.w2", torch.stack(w2)
    yield from _final(args, read, "model.norm.weight")


def _final(args: ModelArgs, read: Reader, norm_name: str) -> Iterator[tuple[str, torch.Tensor]]:
    yield "norm.weight", read(norm_name, (args.d_model,))
    if not args.tie_embeddings:
        yield "output.weight", read("lm_head.weight", (args.vocab_size, args.d_model))


def internal_to_hf(args: ModelArgs, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> HF tensors (DBRX layout, or Mixtral's per-expert layout)."""
    out: dict[str, torch.Tensor] = {}
    e, f, d = args.n_experts, args.ffn_hidden_size, args.d_model
    dbrx = args.family == "dbrx"
    prefix = "transformer" if dbrx else "model"
    out[f"{prefix}.{'wte' if dbrx else 'embed_tokens'}.weight"] = state["tok_embeddings.weight"]
    for i in range(args.n_layers):
        src = f"layers.{i}"
        w13, w2 = state[f"{src}.moe.w13"], state[f"{src}.moe.w2"]
        if dbrx:
            dst, blk = f"transformer.blocks.{i}.norm_attn_norm", f"transformer.blocks.{i}"
            out[f"{dst}.norm_1.weight"] = state[f"{src}.attention_norm.weight"]
            out[f"{dst}.attn.Wqkv.weight"] = state[f"{src}.attention.wqkv.weight"]
            out[f"{dst}.attn.out_proj.weight"] = state[f"{src}.attention.wo.weight"]
            out[f"{dst}.norm_2.weight"] = state[f"{src}.ffn_norm.weight"]
            out[f"{blk}.ffn.router.layer.weight"] = state[f"{src}.moe.router.weight"]
            out[f"{blk}.ffn.experts.mlp.w1"] = w13[:, :f].reshape(e * f, d)
            out[f"{blk}.ffn.experts.mlp.v1"] = w13[:, f:].reshape(e * f, d)
            out[f"{blk}.ffn.experts.mlp.w2"] = w2.reshape(e * f, d)
            continue
        dst = f"model.layers.{i}"
        out[f"{dst}.input_layernorm.weight"] = state[f"{src}.attention_norm.weight"]
        q, k, v = state[f"{src}.attention.wqkv.weight"].split(
            (args.q_size, args.kv_size, args.kv_size)
        )
        out[f"{dst}.self_attn.q_proj.weight"] = q
        out[f"{dst}.self_attn.k_proj.weight"] = k
        out[f"{dst}.self_attn.v_proj.weight"] = v
        out[f"{dst}.self_attn.o_proj.weight"] = state[f"{src}.attention.wo.weight"]
        out[f"{dst}.post_attention_layernorm.weight"] = state[f"{src}.ffn_norm.weight"]
        moe = f"{dst}.block_sparse_moe"
        out[f"{moe}.gate.weight"] = state[f"{src}.moe.router.weight"]
        for x in range(e):
            out[f"{moe}.experts.{x}.w1.weight"] = w13[x, :f]
            out[f"{moe}.experts.{x}.w3.weight"] = w13[x, f:]
            out[f"{moe}.experts.{x}.w2.weight"] = w2[x].T
    out[f"{prefix}.{'norm_f' if dbrx else 'norm'}.weight"] = state["norm.weight"]
    if not args.tie_embeddings:
        out["lm_head.weight"] = state["output.weight"]
    return {name: tensor.contiguous() for name, tensor in out.items()}
