"""Hugging Face checkpoint tensors: HF tensor names and layouts <-> ours (`hf_config`
reads and writes config.json).

Kept out of the model file on purpose: the model knows one parameter layout (fused q|k|v,
experts stacked as `w13` [E, 2F, D] and `w2` [E, F, D]); this module knows every layout
a checkpoint may arrive in and how to pack it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from workers.model.args import ModelArgs

# Buffers some older checkpoints carry that hold nothing we need.
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)

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
