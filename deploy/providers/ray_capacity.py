"""Capacity arithmetic of a Ray cluster, pure: does a `Workload` ever fit its nodes, and can
their free resources start it now? The local provider feeds it `ray.nodes()` and the free
resources per node; kept apart so every answer and message is tested without a cluster.

A node (and a cluster total) is a dict of the resources counted here: "CPU", "GPU" and
"memory" (bytes), as Ray names them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from deploy.providers.base import ReplicaGroup, ReplicaShape, Workload, amount

Node = dict[str, float]

RESOURCES = ("CPU", "GPU", "memory")
SCHEDULED = ("CPU", "GPU")  # what Ray reserves per replica (memory is only an estimate)
_EPSILON = 1e-9  # fractional CPUs are floats
_REPLICA_HINTS = {
    "CPU": "lower workers.cpus_per_shard or attach a cluster with larger nodes (--ray-address)",
    "GPU": "use workload_type CPU or attach a GPU cluster with --ray-address",
    "memory": "the estimate counts the model's weights in its dtype, its KV cache "
    "(workers.engine.kv_cache_tokens) and one process per shard; serve a smaller model or "
    "attach a cluster with larger nodes (--ray-address)",
}
_TOTAL_HINTS = {
    "CPU": "ask for fewer replicas (a smaller workload_size or provisioned throughput) or "
    "attach a larger cluster with --ray-address",
    "GPU": "ask for fewer replicas (a smaller workload_size or provisioned throughput) or "
    "attach a larger GPU cluster with --ray-address",
    "memory": "ask for fewer replicas or smaller models, or attach a larger cluster with "
    "--ray-address",
}


def node_capacity(resources: Mapping[str, Any]) -> Node:
    """The counted resources of a Ray resource dict (a node's, or the cluster's)."""
    return {r: float(resources.get(r, 0)) for r in RESOURCES}


def needs(shape: ReplicaShape) -> Node:
    return {"CPU": shape.cpus, "GPU": float(shape.gpus), "memory": float(shape.memory_bytes)}


def totals(workload: Workload) -> Node:
    return {
        "CPU": workload.cpus(),
        "GPU": float(workload.gpus()),
        "memory": float(workload.memory_bytes()),
    }


def _fits(need: Node, node: Node, resources: tuple[str, ...]) -> bool:
    return all(need[r] <= node[r] + _EPSILON for r in resources)


def never_fits(workload: Workload, nodes: list[Node], cluster: str) -> str | None:
    """Why `nodes` (their capacity, not what is free) can never host `workload`, or None.

    Each replica needs one node with all its CPUs, GPUs and memory (a replica's shards are
    packed on one node), and all replicas together need no more than the totals. Both are
    necessary, not sufficient (placement is Ray's), so a refusal is certain and a workload
    that might fit is never refused. `cluster` names the cluster in the message."""
    for group in workload.groups:
        problem = _one_replica_misfit(group, nodes, cluster)
        if problem is not None:
            return problem
    for resource, need in totals(workload).items():
        have = sum(node[resource] for node in nodes)
        if need > have + _EPSILON:
            parts = ", ".join(
                f"{g.name}: {g.replicas} x {amount(resource, needs(g.shape)[resource])}"
                for g in workload.groups
                if g.replicas and needs(g.shape)[resource]
            )
            return (
                f"the served entities need {amount(resource, need)} together ({parts}); "
                f"{cluster} has {amount(resource, have)} in all; {_TOTAL_HINTS[resource]}"
            )
    return None


def _one_replica_misfit(group: ReplicaGroup, nodes: list[Node], cluster: str) -> str | None:
    need = needs(group.shape)
    if any(_fits(need, node, RESOURCES) for node in nodes):
        return None
    for resource in RESOURCES:
        largest = max((node[resource] for node in nodes), default=0.0)
        if need[resource] > largest + _EPSILON:
            total = sum(node[resource] for node in nodes)
            return (
                f"served entity {group.name!r}: a replica needs {amount(resource, need[resource])}"
                f" on one node; {cluster} has {amount(resource, largest)} on its largest node "
                f"({amount(resource, total)} in all); {_REPLICA_HINTS[resource]}"
            )
    wanted = ", ".join(amount(r, need[r]) for r in RESOURCES if need[r])
    return (
        f"served entity {group.name!r}: a replica needs {wanted} on one node; no node of "
        f"{cluster} has them all"
    )


def waiting_for(workload: Workload, free: list[Node], cluster_total: Node) -> str | None:
    """None when the `free` resources of the nodes can start every replica of `workload`
    now; else what it waits for. Counts CPUs and GPUs, what Ray reserves. Replicas are
    placed largest first, each on the first node with enough left (first fit)."""
    left = [dict(node) for node in free]
    replicas = sorted(
        (g for g in workload.groups for _ in range(g.replicas)),
        key=lambda g: (g.shape.gpus, g.shape.cpus),
        reverse=True,
    )
    for group in replicas:
        need = needs(group.shape)
        node = next((n for n in left if _fits(need, n, SCHEDULED)), None)
        if node is None:
            return _waiting(workload, group, free, cluster_total)
        for resource in SCHEDULED:
            node[resource] -= need[resource]
    return None


def _waiting(workload: Workload, unplaced: ReplicaGroup, free: list[Node], total: Node) -> str:
    """The resource the workload needs more of than is free ("waiting for 2 CPUs: 0.5 of 8
    free"), or, when the free totals would do, the node-sized piece one replica needs."""
    needed = totals(workload)
    for resource in ("GPU", "CPU"):
        have = sum(node[resource] for node in free)
        if needed[resource] > have + _EPSILON:
            return (
                f"waiting for {amount(resource, needed[resource])}: {have:g} of "
                f"{total[resource]:g} free"
            )
    need = needs(unplaced.shape)
    short = [r for r in SCHEDULED if need[r]]
    wanted = " and ".join(amount(r, need[r]) for r in short)
    most = " and ".join(amount(r, max((n[r] for n in free), default=0.0)) for r in short)
    return (
        f"waiting for a node with {wanted} free for a replica of {unplaced.name!r}: the most "
        f"one node has free is {most}"
    )
