"""Tensor- and expert-parallel sharding of the MoE transformer over a torch.distributed group.

`check_shardable(args, mode, world_size)` says whether (and how not) a model's shapes split
over `world_size` ranks; `shard_model(model, mode, rank, world_size, group)` turns a fully
loaded `MoETransformer` in place into one rank's shard. In "tensor" mode every rank holds a
slice of each block's heads and of every expert's hidden units, and all-reduces attention
and MoE outputs; in "expert" mode attention is replicated and each rank holds E/world
experts, with tokens dispatched to them and combined back by all-to-all. Either way every
rank of the group calls the model together with the same input ids and gets the full logits.
The model package itself stays free of distributed code.
"""

from workers.parallel.expert_parallel import ExpertParallelMoE
from workers.parallel.sharding import ParallelMode, check_shardable, shard_model
from workers.parallel.tensor_parallel import TensorParallelAttention, TensorParallelMoE

__all__ = [
    "ExpertParallelMoE",
    "ParallelMode",
    "TensorParallelAttention",
    "TensorParallelMoE",
    "check_shardable",
    "shard_model",
]
