"""Hugging Face `config.json` <-> `ModelArgs`: reading a checkpoint's shapes without its
weights (pure: no torch), so the control plane can validate and size models cheaply.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workers.model.args import ModelArgs

SUPPORTED_MODEL_TYPES = ("dbrx", "mixtral")


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


def hf_config_from_args(args: ModelArgs, dtype: str) -> dict[str, Any]:
    """The `config.json` transformers reads for `args`; `dtype` as transformers names it
    (e.g. "float32")."""
    common = {
        "vocab_size": args.vocab_size,
        "tie_word_embeddings": args.tie_embeddings,
        "bos_token_id": args.bos_token_id,
        "eos_token_id": args.eos_token_id,
        "pad_token_id": args.pad_token_id,
        "dtype": dtype,
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


def read_config(path: str | Path) -> dict[str, Any]:
    config_path = Path(path) / "config.json"
    try:
        config: dict[str, Any] = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{config_path} not found: a checkpoint directory needs "
            "config.json next to its safetensors files"
        ) from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path} is not valid JSON: {exc}") from None
    return config


def read_args(path: str | Path) -> ModelArgs:
    return args_from_hf_config(read_config(path))
