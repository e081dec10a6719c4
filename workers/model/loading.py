"""Turning a model's description into weights in memory: `load_model(source, device)` for
what a replica serves (a preset's seeded weights or a checkpoint), `build_random` for any
shape with seeded weights (benchmarks, tests)."""

from __future__ import annotations

import torch

from workers.model.args import ModelArgs
from workers.model.checkpoint import load_checkpoint
from workers.model.kernels import use_fast_kernels
from workers.model.presets import runnable_preset
from workers.model.source import DTypeName, ModelSource
from workers.model.transformer import MoETransformer

TORCH_DTYPES: dict[DTypeName, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def load_model(source: ModelSource, device: str | torch.device = "cpu") -> MoETransformer:
    """The model `source` describes, on `device`, in its dtype (eval mode, no gradients)."""
    dtype = TORCH_DTYPES[source.dtype]
    if source.preset is not None:
        return from_preset(source.preset, device=device, dtype=dtype, seed=source.seed)
    assert source.checkpoint is not None
    return load_checkpoint(source.checkpoint, device=device, dtype=dtype)


def init_weights(model: MoETransformer, seed: int, std: float = 0.02) -> None:
    """Deterministic init from `seed`, drawn on the CPU so every device gets the same weights."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                values = torch.ones(param.shape)
            else:
                values = torch.empty(param.shape).normal_(0.0, std, generator=generator)
            param.copy_(values)


def build_random(
    args: ModelArgs,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    std: float = 0.02,
) -> MoETransformer:
    """A model of any shape with seeded random weights (benchmarks, tests)."""
    model = MoETransformer(args).to(device=device, dtype=dtype)
    init_weights(model, seed, std)
    model.eval().requires_grad_(False)
    use_fast_kernels(model)
    return model


def from_preset(
    name: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> MoETransformer:
    chosen = runnable_preset(name)
    return build_random(chosen.args, device=device, dtype=dtype, seed=seed)
