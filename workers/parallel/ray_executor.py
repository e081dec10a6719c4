"""A sharded replica on Ray: this process is rank 0 and drives; ranks 1..N-1 are actors.

The replica (a Ray Serve deployment, or any actor placed in a placement group of N bundles)
builds a `ShardedExecutor`. It starts one `RankWorker` actor per other bundle of its
placement group, and all N ranks join one torch.distributed group (NCCL on GPU, gloo on
CPU). Every rank loads the model, keeps its shard (`shard_model`) and its own paged KV
cache. Each step, rank 0 sends the same `StepInput` to every actor, runs its own shard, and
the collectives inside the model keep the ranks in lockstep; rank 0's logits are the
result. Embeddings go the same way (every rank runs the same cache-less forward; rank 0's
pooled vector is the result). The scheduler, block tables and sampling live only on rank 0.
"""

from __future__ import annotations

import datetime
import logging
import socket
from typing import Any

import ray
import torch
import torch.distributed as dist
from ray.util.placement_group import PlacementGroup, get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from workers.engine.model_runner import ModelRunner, StepInput
from workers.model.loading import load_model
from workers.model.source import ModelSource
from workers.parallel.modes import ParallelMode, check_shardable
from workers.parallel.sharding import shard_model

log = logging.getLogger(__name__)

COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=120)


def _join_group(init_method: str, rank: int, world_size: int, device: str) -> None:
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if dist.is_initialized():
        raise RuntimeError("this process already belongs to a torch.distributed group")
    dist.init_process_group(
        backend,
        init_method=init_method,
        rank=rank,
        world_size=world_size,
        timeout=COLLECTIVE_TIMEOUT,
    )


def _load_shard(
    source: ModelSource,
    mode: ParallelMode,
    rank: int,
    world_size: int,
    device: str,
    num_blocks: int,
    block_size: int,
) -> ModelRunner:
    model = load_model(source, device)
    shard_model(model, mode, rank, world_size)
    return ModelRunner(model, num_blocks=num_blocks, block_size=block_size)


class RankWorker:
    """One non-driver rank. Created by `ShardedExecutor` as a Ray actor."""

    def __init__(
        self,
        source: ModelSource,
        mode: ParallelMode,
        rank: int,
        world_size: int,
        init_method: str,
        device: str,
        num_blocks: int,
        block_size: int,
        threads: int | None,
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        if device.startswith("cuda"):
            torch.cuda.set_device(0)  # Ray exposes this bundle's GPU as device 0
        _join_group(init_method, rank, world_size, device)
        self.runner = _load_shard(source, mode, rank, world_size, device, num_blocks, block_size)

    def ready(self) -> bool:
        return True

    def execute(self, step: StepInput) -> None:
        self.runner.execute(step)

    def embed(self, token_ids: list[int]) -> None:
        self.runner.embed(token_ids)  # joins rank 0's collectives; its vector is the result

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


class ShardedExecutor:
    """`Executor` over `world_size` ranks of this process's placement group."""

    def __init__(
        self,
        source: ModelSource,
        *,
        mode: ParallelMode,
        world_size: int,
        device: str,
        num_blocks: int,
        block_size: int,
        cpus_per_rank: float = 1.0,
        threads_per_rank: int | None = None,
        placement_group: PlacementGroup | None = None,
    ) -> None:
        check_shardable(source.args(), mode, world_size)
        group = placement_group or get_current_placement_group()
        if group is None or group.bundle_count < world_size:
            have = 0 if group is None else group.bundle_count
            raise RuntimeError(
                f"a {world_size}-rank replica needs a placement group of {world_size} bundles "
                f"(placement_group_bundles in the deployment); this process has {have}"
            )
        address = ray.util.get_node_ip_address()
        init_method = f"tcp://{address}:{_free_port()}"
        worker_cls: Any = ray.remote(RankWorker)
        gpus = 1 if device.startswith("cuda") else 0
        self._actors = [
            worker_cls.options(
                num_cpus=cpus_per_rank,
                num_gpus=gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=group, placement_group_bundle_index=rank
                ),
            ).remote(
                source,
                mode,
                rank,
                world_size,
                init_method,
                device,
                num_blocks,
                block_size,
                threads_per_rank,
            )
            for rank in range(1, world_size)
        ]
        if device.startswith("cuda"):
            torch.cuda.set_device(0)
        _join_group(init_method, 0, world_size, device)
        self._runner = _load_shard(source, mode, 0, world_size, device, num_blocks, block_size)
        ray.get([actor.ready.remote() for actor in self._actors])
        log.info("sharded replica ready: %d ranks, %s parallel", world_size, mode)

    @property
    def block_size(self) -> int:
        return self._runner.cache.block_size

    @property
    def num_blocks(self) -> int:
        return self._runner.cache.num_blocks

    def execute(self, step: StepInput) -> torch.Tensor:
        pending = [actor.execute.remote(step) for actor in self._actors]
        logits = self._runner.execute(step)
        ray.get(pending)  # surfaces a failed rank instead of hanging on the next step
        return logits

    def embed(self, token_ids: list[int]) -> torch.Tensor:
        pending = [actor.embed.remote(token_ids) for actor in self._actors]
        vector = self._runner.embed(token_ids)
        ray.get(pending)
        return vector

    def shutdown(self) -> None:
        for actor in self._actors:
            try:
                ray.get(actor.shutdown.remote(), timeout=10)
            except Exception:  # the rank may already be gone; it is killed below anyway
                log.warning("rank shutdown failed", exc_info=True)
            ray.kill(actor)
        self._actors = []
        if dist.is_initialized():
            dist.destroy_process_group()
