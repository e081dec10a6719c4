"""Turn a full `MoETransformer` into one rank's shard, after checking the shapes divide.

Embeddings, norms and the LM head are replicated in both modes: at the sizes we serve they
are a small fraction of the weights, and replicating them keeps the logits whole on every
rank (no gather before sampling).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from workers.model.transformer import MoETransformer
from workers.parallel.expert_parallel import ExpertParallelMoE
from workers.parallel.modes import ParallelMode, check_shardable
from workers.parallel.tensor_parallel import TensorParallelAttention, TensorParallelMoE


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
