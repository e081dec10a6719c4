"""The capacity arithmetic behind the local provider (`deploy.providers.ray_capacity`) and
the replica estimate (`replica_shape`), without a cluster: what never fits, what waits, and
what each message says."""

from __future__ import annotations

from deploy.providers.base import (
    GIB,
    SHARD_PROCESS_BYTES,
    ReplicaGroup,
    ReplicaShape,
    Workload,
    replica_shape,
)
from deploy.providers.ray_capacity import Node, never_fits, waiting_for
from workers.engine.config import EngineConfig
from workers.model.presets import preset
from workers.model.source import ModelSource
from workers.serve.config import WorkerAppConfig

CLUSTER = "the test cluster"


def node(cpus: float, gpus: float = 0, memory_gib: float = 16) -> Node:
    return {"CPU": cpus, "GPU": gpus, "memory": memory_gib * GIB}


def cpu_replica(cpus: float, memory_gib: float = 1) -> ReplicaShape:
    return ReplicaShape(1, cpus, 0, int(memory_gib * GIB))


def workload(*groups: tuple[str, ReplicaShape, int]) -> Workload:
    return Workload(tuple(ReplicaGroup(*group) for group in groups))


def test_replica_memory_is_weights_kv_cache_and_one_process_per_shard() -> None:
    args = preset("dbrx-tiny").args
    engine = EngineConfig(kv_cache_tokens=1000, block_size=16)  # rounds up to 1008 tokens
    worker = WorkerAppConfig(model=ModelSource(preset="dbrx-tiny"), engine=engine)
    shape = replica_shape(worker)
    weights = args.parameter_count() * 4  # fp32
    assert shape.memory_bytes == SHARD_PROCESS_BYTES + weights + 1008 * args.kv_bytes_per_token(4)
    assert (shape.cpus, shape.gpus, shape.gpu_memory_bytes) == (1.0, 0, 0)

    # Two shards: embeddings and LM head on each, the rest split; a second process.
    two = replica_shape(worker.model_copy(update={"shards": 2}))
    embeddings = args.vocab_size * args.d_model * 2 * 4
    assert two.memory_bytes - shape.memory_bytes == SHARD_PROCESS_BYTES + embeddings

    # On GPUs the model lives in GPU memory; the host keeps the processes.
    cuda = replica_shape(worker.model_copy(update={"device": "cuda", "shards": 2}))
    assert (cuda.gpus, cuda.memory_bytes) == (2, 2 * SHARD_PROCESS_BYTES)
    assert cuda.gpu_memory_bytes == -(-(two.memory_bytes - cuda.memory_bytes) // 2)


def test_a_checkpoint_whose_config_is_gone_counts_its_processes_only() -> None:
    worker = WorkerAppConfig(model=ModelSource(checkpoint="/nonexistent/checkpoint"))
    assert replica_shape(worker).memory_bytes == SHARD_PROCESS_BYTES


def test_what_fits_the_nodes_is_never_refused() -> None:
    fits = workload(("a", cpu_replica(4), 1), ("b", cpu_replica(2), 2))
    assert never_fits(fits, [node(4), node(4)], CLUSTER) is None


def test_replicas_together_may_not_exceed_the_totals() -> None:
    problem = never_fits(
        workload(("a", cpu_replica(3), 2), ("b", cpu_replica(3), 1)), [node(4), node(4)], CLUSTER
    )
    assert problem is not None
    assert problem.startswith(
        "the served entities need 9 CPUs together (a: 2 x 3 CPUs, b: 1 x 3 CPUs); "
        "the test cluster has 8 CPUs in all"
    )


def test_one_replica_needs_one_node_with_all_it_needs() -> None:
    big = never_fits(workload(("a", cpu_replica(6), 1)), [node(4), node(4)], CLUSTER)
    assert big is not None
    assert big.startswith(
        "served entity 'a': a replica needs 6 CPUs on one node; the test cluster has 4 CPUs "
        "on its largest node (8 CPUs in all)"
    )
    memory = never_fits(workload(("m", cpu_replica(1, 20), 1)), [node(8, memory_gib=16)], CLUSTER)
    assert memory is not None and "needs 20.0 GiB of memory on one node" in memory
    assert "KV cache" in memory  # says what the estimate counts
    gpu = ReplicaShape(2, 1, 1, GIB)
    gpus = never_fits(workload(("g", gpu, 1)), [node(8)], CLUSTER)
    assert gpus is not None and "needs 2 GPUs on one node" in gpus
    assert "workload_type CPU" in gpus
    # Each resource exists somewhere, but on no single node together.
    split = never_fits(workload(("g", gpu, 1)), [node(8), node(0, gpus=4)], CLUSTER)
    assert split is not None and split.endswith("no node of the test cluster has them all")


def test_a_workload_waits_for_what_is_not_free() -> None:
    one = workload(("a", cpu_replica(2), 1))
    assert waiting_for(one, [node(2)], node(8)) is None
    assert waiting_for(one, [node(0.5)], node(8)) == "waiting for 2 CPUs: 0.5 of 8 free"
    # Enough free in all, but no node has a replica's worth.
    assert waiting_for(one, [node(1), node(1)], node(8)) == (
        "waiting for a node with 2 CPUs free for a replica of 'a': the most one node has "
        "free is 1 CPU"
    )
    # Replicas already placed take from what the next ones see.
    two = workload(("a", cpu_replica(2), 2))
    assert waiting_for(two, [node(3)], node(8)) == "waiting for 4 CPUs: 3 of 8 free"
    gpus = workload(("g", ReplicaShape(1, 1, 1, GIB), 1))
    assert waiting_for(gpus, [node(4)], node(4)) == "waiting for 1 GPU: 0 of 0 free"


def test_an_entity_that_starts_at_zero_replicas_never_waits() -> None:
    assert waiting_for(workload(("z", cpu_replica(64), 0)), [node(0)], node(8)) is None
