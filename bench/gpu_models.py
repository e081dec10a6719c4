"""The two models of `bench/gpu_bench.py`, built fast at full DBRX width.

HF's `DbrxForCausalLM` is allocated on the device in its dtype directly, with its own seeded
init; moeserve's model is assembled over HF's tensors by `hf_to_internal` (the renaming
`load_checkpoint` uses), sharing every tensor but the packed w1|v1. Without HF, moeserve's
model gets seeded weights drawn on the device: `build_random` draws in fp32 on the CPU, which
takes minutes at 14 B parameters.
"""

from __future__ import annotations

from typing import Any

import torch

from workers.model.args import ModelArgs
from workers.model.hf_config import CheckpointError, hf_config_from_args
from workers.model.hf_format import IGNORED_SUFFIXES, hf_to_internal
from workers.model.transformer import MoETransformer


def resident_bytes(args: ModelArgs, element_size: int, *, with_hf: bool) -> int:
    """Weight bytes on the device: one copy, plus moeserve's own packed w13 when shared with HF."""
    own_w13 = args.n_layers * 2 * args.n_experts * args.ffn_hidden_size * args.d_model
    return (args.parameter_count() + (own_w13 if with_hf else 0)) * element_size


def build_hf(args: ModelArgs, device: torch.device, dtype: torch.dtype, seed: int) -> Any:
    """HF's DbrxForCausalLM with its own init, allocated on `device` in `dtype` directly."""
    import transformers

    transformers.logging.set_verbosity_error()
    config = transformers.DbrxConfig.from_dict(
        hf_config_from_args(args, str(dtype).removeprefix("torch."))
    )
    torch.manual_seed(seed)  # seeds the CUDA generators too
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(
            config, dtype=dtype, attn_implementation="sdpa"
        )
    if model.lm_head.weight.device != device:  # a transformers that ignored the device context
        model.to(device)
    return model.eval().requires_grad_(False)


def moeserve_from_hf(hf: Any, args: ModelArgs) -> MoETransformer:
    """moeserve's model over HF's tensors: shared storage, except the packed w1|v1 (`w13`)."""
    tensors: dict[str, torch.Tensor] = hf.state_dict()
    used: set[str] = set()

    def read(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        tensor = tensors.get(name)
        if tensor is None:
            raise CheckpointError(f"the HF model has no tensor {name!r}")
        if tuple(tensor.shape) != shape:
            raise CheckpointError(f"HF tensor {name!r} is {list(tensor.shape)}, not {list(shape)}")
        used.add(name)
        return tensor

    state = dict(hf_to_internal(args, read, set(tensors)))
    unused = sorted(n for n in tensors.keys() - used if not n.endswith(IGNORED_SUFFIXES))
    if unused:
        raise CheckpointError(f"HF tensors the mapping did not use: {unused[:5]}")
    with torch.device("meta"):
        model = MoETransformer(args)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def build_random_on_device(
    args: ModelArgs, device: torch.device, dtype: torch.dtype, seed: int, std: float = 0.02
) -> MoETransformer:
    """Seeded random weights drawn where they live (`build_random` draws on the CPU in fp32,
    minutes at this size); allocated once, in `dtype`."""
    with torch.device("meta"):
        model = MoETransformer(args).to(dtype)
    model = model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, std, generator=generator)
    return model.eval().requires_grad_(False)
