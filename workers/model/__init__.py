"""The MoE transformer (DBRX and Mixtral families) and its checkpoints.

`from_preset(name)` builds a named configuration with seeded weights, `load_checkpoint(dir)`
loads a Hugging Face checkpoint directory, `save_checkpoint(model, dir)` writes one that
`transformers` also reads. The model is called with input ids [B, T] and returns logits
[B, T, vocab]; pass a `KVCache` (from `model.new_cache`) for incremental decoding. On CPU in
fp32 its matmuls run on oneDNN-packed weight copies (`prepack_weights`, `set_weight_packing`).
"""

from workers.model.args import ModelArgs
from workers.model.checkpoint import (
    load_checkpoint,
    read_args,
    save_checkpoint,
    verify_checkpoint,
)
from workers.model.hf_format import CheckpointError
from workers.model.kv_cache import KVCache
from workers.model.packed import prepack_weights, set_weight_packing
from workers.model.presets import PRESETS, build_random, from_preset, preset
from workers.model.source import TORCH_DTYPES, ModelSource
from workers.model.transformer import MoETransformer

__all__ = [
    "PRESETS",
    "TORCH_DTYPES",
    "CheckpointError",
    "KVCache",
    "MoETransformer",
    "ModelArgs",
    "ModelSource",
    "build_random",
    "from_preset",
    "load_checkpoint",
    "prepack_weights",
    "preset",
    "read_args",
    "save_checkpoint",
    "set_weight_packing",
    "verify_checkpoint",
]
