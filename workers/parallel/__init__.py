"""Tensor- and expert-parallel sharding of the MoE transformer over a torch.distributed group.

`modes.check_shardable(args, mode, world_size)` says (pure, no torch) whether and how not a
model's shapes split over `world_size` ranks; `sharding.shard_model(model, mode, rank,
world_size, group)` turns a fully loaded `MoETransformer` in place into one rank's shard. In
"tensor" mode every rank holds a slice of each block's heads and of every expert's hidden
units, and all-reduces attention and MoE outputs (`tensor_parallel`); in "expert" mode
attention is replicated and each rank holds E/world experts, with tokens dispatched to them
and combined back by all-to-all (`expert_parallel`). Either way every rank of the group calls
the model together with the same input ids and gets the full logits. `ray_executor` runs the
ranks of a sharded replica as Ray actors. The model package itself stays free of distributed
code.
"""
