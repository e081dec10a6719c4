"""Named model configurations: tiny ones with seeded random weights, and the real shapes.

Tiny presets use the real cl100k vocabulary (100352 rows), so every layer above the model —
tokenizer, engine, API, billing — runs end to end on a CPU in seconds. Real shapes exist to
describe checkpoints and size GPUs; their weights come from `load_checkpoint`. Pure data:
`workers.model.loading` builds the seeded weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.model.args import ModelArgs

CL100K_VOCAB = 100352  # cl100k_base padded to a multiple of 128 rows, as DBRX does
CL100K_EOS = 100257


@dataclass(frozen=True)
class Preset:
    args: ModelArgs
    random_weights: bool  # False: real shapes, to be loaded from a checkpoint
    tokenizer: str


_DBRX_REAL = ModelArgs(
    family="dbrx",
    vocab_size=CL100K_VOCAB,
    d_model=6144,
    n_layers=40,
    n_heads=48,
    n_kv_heads=8,
    head_dim=128,
    ffn_hidden_size=10752,
    n_experts=16,
    top_k=4,
    max_seq_len=32768,
    rope_theta=500000.0,
    norm="layernorm",
    clip_qkv=8.0,
    router_norm_p=1.0,
    bos_token_id=CL100K_EOS,
    eos_token_id=CL100K_EOS,
)

PRESETS: dict[str, Preset] = {
    "dbrx-tiny": Preset(
        _DBRX_REAL.replace(
            d_model=128,
            n_layers=2,
            n_heads=4,
            n_kv_heads=2,
            head_dim=32,
            ffn_hidden_size=256,
            max_seq_len=4096,
        ),
        random_weights=True,
        tokenizer="cl100k_base",
    ),
    "mixtral-tiny": Preset(
        ModelArgs(
            family="mixtral",
            vocab_size=CL100K_VOCAB,
            d_model=128,
            n_layers=2,
            n_heads=4,
            n_kv_heads=2,
            head_dim=32,
            ffn_hidden_size=256,
            n_experts=8,
            top_k=2,
            max_seq_len=4096,
            rope_theta=1e6,
            norm="rmsnorm",
            bos_token_id=CL100K_EOS,
            eos_token_id=CL100K_EOS,
        ),
        random_weights=True,
        tokenizer="cl100k_base",
    ),
    # The 309 M-parameter DBRX-architecture config of the CPU benchmark (docs/models.md).
    "dbrx-bench-309m": Preset(
        _DBRX_REAL.replace(
            d_model=512,
            n_layers=8,
            n_heads=8,
            n_kv_heads=2,
            head_dim=64,
            ffn_hidden_size=1024,
            max_seq_len=4096,
        ),
        random_weights=True,
        tokenizer="cl100k_base",
    ),
    "dbrx-instruct": Preset(_DBRX_REAL, random_weights=False, tokenizer="cl100k_base"),
    "dbrx-base": Preset(_DBRX_REAL, random_weights=False, tokenizer="cl100k_base"),
    "mixtral-8x7b": Preset(
        ModelArgs(
            family="mixtral",
            vocab_size=32000,
            d_model=4096,
            n_layers=32,
            n_heads=32,
            n_kv_heads=8,
            head_dim=128,
            ffn_hidden_size=14336,
            n_experts=8,
            top_k=2,
            max_seq_len=32768,
            rope_theta=1e6,
            norm="rmsnorm",
            bos_token_id=1,
            eos_token_id=2,
        ),
        random_weights=False,
        tokenizer="checkpoint",
    ),
}


def preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def runnable_preset(name: str) -> Preset:
    """The preset `name`, if it has seeded weights of its own; else a ValueError saying where
    the weights must come from."""
    chosen = preset(name)
    if not chosen.random_weights:
        billions = chosen.args.parameter_count() / 1e9
        raise ValueError(
            f"preset {name!r} has real shapes ({billions:.1f} B parameters) and no weights of "
            "its own: load its checkpoint with workers.model.checkpoint.load_checkpoint(path) "
            "(on the command line: --checkpoint DIR)"
        )
    return chosen
