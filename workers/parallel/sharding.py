"""Turn a full `MoETransformer` into one rank's shard, after checking the shapes divide.

Embeddings, norms and the LM head are replicated in both modes: at the sizes we serve they
are a small fraction of the weights, and replicating them keeps the logits whole on every
rank (no gather before sampling).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from workers.model import ModelArgs, MoETransformer
from workers.parallel.expert_parallel import ExpertParallelMoE
from workers.parallel.tensor_parallel import TensorParallelAttention, TensorParallelMoE

ParallelMode = Literal["tensor", "expert"]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _and_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def check_shardable(args: ModelArgs, mode: ParallelMode, world_size: int) -> None:
    """Raise ValueError, saying what to change, unless `args` splits evenly over
    `world_size` ranks in `mode`."""
    if mode not in get_args(ParallelMode):
        raise ValueError(f"unknown parallel mode {mode!r}; choose 'tensor' or 'expert'")
    if world_size < 1:
        raise ValueError(f"world size must be at least 1, got {world_size}")
    if mode == "tensor":
        sizes = {
            "n_heads": args.n_heads,
            "n_kv_heads": args.n_kv_heads,
            "ffn_hidden_size": args.ffn_hidden_size,
        }
    else:
        sizes = {"n_experts": args.n_experts}
    uneven = [f"{name} ({size})" for name, size in sizes.items() if size % world_size]
    if uneven:
        choices = _divisors(math.gcd(*sizes.values()))
        raise ValueError(
            f"{mode} parallel over {world_size} ranks needs {_and_list(uneven)} "
            f"divisible by {world_size}; pick a world size from {choices}"
        )


def shard_model(
    model: MoETransformer,
    mode: ParallelMode,
    rank: int,
    world_size: int,
    group: ProcessGroup | None = None,
) -> MoETransformer:
    """Turn the full `model` in place into rank `rank`'s shard and return it.

    The shard's forward runs collectives over `group` (None: the default process group), so
    every rank of the group must call the model together, with the same input ids. Sliced
    weights are copies, so the full weights' memory is released as the model drops them.
    """
    check_shardable(model.args, mode, world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside the world of {world_size} ranks")
    if world_size == 1:
        return model  # nothing to split, and no group to talk to
    if dist.is_initialized():
        group_size, group_rank = dist.get_world_size(group), dist.get_rank(group)
        if (group_size, group_rank) != (world_size, rank):
            raise ValueError(
                f"asked for rank {rank} of {world_size}, but this process is rank "
                f"{group_rank} of the process group's {group_size}"
            )
    sharded = (TensorParallelAttention, TensorParallelMoE, ExpertParallelMoE)
    if any(isinstance(module, sharded) for module in model.modules()):
        raise ValueError("model is already a shard; shard_model needs the full model")
    with torch.no_grad():
        for index in range(model.args.n_layers):
            block = model.block(index)
            if mode == "tensor":
                block.attention = TensorParallelAttention(
                    block.attention, model.args, rank, world_size, group
                )
                block.moe = TensorParallelMoE(block.moe, model.args, rank, world_size, group)
            else:
                block.moe = ExpertParallelMoE(block.moe, model.args, rank, world_size, group)
    leftover = [name for name, param in model.named_parameters() if param.is_meta]
    assert not leftover, f"shard left shape-only parameters: {leftover}"
    return model
