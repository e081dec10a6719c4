"""The provider interface: what every deployment target (local Ray, a cloud) offers.

A provider hosts named Ray Serve applications, one per served model configuration. The
caller chooses the application name and encodes the configuration in it, so "same name"
means "same config": `deploy` of an existing, healthy name is a no-op. Every method may
block on the cluster for a while; callers run them in a worker thread, and never inside a
database transaction.

Capacity is asked about as a `Workload`: every replica a config needs at once, each with
the CPUs, GPUs and memory it holds (`replica_shape`). `check_supported` answers whether the
cluster (or the catalog, for a cloud) could ever host it; `shortfall` whether its free
resources can start it now, and if not, what it is waiting for.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from deploy.providers.placement import Placement
from workers.serve.config import WorkerAppConfig

GIB = 2**30
# One shard's process before it loads a model: Python, torch, the Ray worker and the
# tokenizer (a bare Python with torch and ray imported measured ~0.25 GiB here).
SHARD_PROCESS_BYTES = GIB // 2
_DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


class AppPhase(StrEnum):
    DEPLOYING = "DEPLOYING"
    RUNNING = "RUNNING"
    FAILED = "FAILED"
    UNHEALTHY = "UNHEALTHY"
    DELETING = "DELETING"


@dataclass(frozen=True)
class AppStatus:
    name: str
    phase: AppPhase
    message: str  # why the app is not RUNNING (the failing exception, a scheduling delay)
    running_replicas: int
    target_replicas: int | None  # None while the provider does not know it yet
    node_resource: str | None = None  # the cloud node group's Ray resource its replicas hold
    placement_note: str = ""  # where its capacity came from (shapes refused before it)


class UnsupportedCapacity(ValueError):
    """The provider cannot host this workload; raised before any deployment is attempted.
    The message says what to change."""


class AppNotFound(LookupError):
    """No application of that name exists on the provider."""


@dataclass(frozen=True)
class ReplicaShape:
    """What one replica holds while it runs: `shards` processes packed on one node (Serve's
    STRICT_PACK placement group), each reserving `cpus_per_shard` CPUs and `gpus_per_shard`
    GPUs in Ray. `memory_bytes` is host memory for the whole replica (estimated: it is not
    a Ray reservation); `gpu_memory_bytes` is what each GPU holds (0 on CPU)."""

    shards: int
    cpus_per_shard: float
    gpus_per_shard: int
    memory_bytes: int
    gpu_memory_bytes: int = 0

    @property
    def cpus(self) -> float:
        return self.shards * self.cpus_per_shard

    @property
    def gpus(self) -> int:
        return self.shards * self.gpus_per_shard


def replica_shape(worker: WorkerAppConfig) -> ReplicaShape:
    """The resources one replica of `worker` holds. Memory is the model's weights in the
    serving dtype (embeddings and LM head on every shard, the rest split), its KV cache
    (`engine.kv_cache_tokens`, rounded up to whole blocks) and one process per shard; on
    a GPU the weights and KV cache live in GPU memory instead. A checkpoint whose config
    cannot be read counts its processes only (its deployment fails and says why)."""
    shards = worker.shards
    processes = shards * SHARD_PROCESS_BYTES
    try:
        args = worker.model.args()
    except (OSError, ValueError):  # a missing or unreadable checkpoint config
        state = 0
    else:
        element = _DTYPE_BYTES[worker.model.dtype]
        embeddings = args.vocab_size * args.d_model * (1 if args.tie_embeddings else 2)
        weights = args.parameter_count() + (shards - 1) * embeddings
        kv_tokens = worker.engine.num_blocks * worker.engine.block_size
        state = weights * element + kv_tokens * args.kv_bytes_per_token(element)
    if worker.device == "cuda":
        return ReplicaShape(shards, worker.cpus_per_shard, 1, processes, -(-state // shards))
    return ReplicaShape(shards, worker.cpus_per_shard, 0, processes + state)


@dataclass(frozen=True)
class ReplicaGroup:
    """`replicas` replicas of one served entity (named `name` in messages) that must be
    able to run at the same time."""

    name: str
    shape: ReplicaShape
    replicas: int
    placement: Placement | None = None  # a cloud node group of its own; None: the cluster


@dataclass(frozen=True)
class Workload:
    """Everything a provider is asked to host at once."""

    groups: tuple[ReplicaGroup, ...]

    def on_cluster(self) -> Workload:
        """The groups the Ray cluster itself must hold (those without a cloud placement)."""
        return Workload(tuple(g for g in self.groups if g.placement is None))

    def placed(self) -> tuple[ReplicaGroup, ...]:
        """The groups that bring their own cloud capacity."""
        return tuple(g for g in self.groups if g.placement is not None)

    def cpus(self) -> float:
        return sum(g.replicas * g.shape.cpus for g in self.groups)

    def gpus(self) -> int:
        return sum(g.replicas * g.shape.gpus for g in self.groups)

    def memory_bytes(self) -> int:
        return sum(g.replicas * g.shape.memory_bytes for g in self.groups)


def amount(resource: str, value: float) -> str:
    """A resource amount as messages spell it: "2 CPUs", "0.5 CPUs", "1 GPU", "3.2 GiB"."""
    if resource == "memory":
        return f"{value / GIB:.1f} GiB of memory"
    unit = resource if value == 1 else f"{resource}s"
    return f"{value:g} {unit}"


@dataclass(frozen=True)
class AppSpec:
    name: str  # the Serve application name, chosen by the caller; encodes the config
    worker: WorkerAppConfig
    placement: Placement | None = None  # its workspace's cloud; None: the cluster as it is


class Provider(Protocol):
    name: str  # "local", "aws", ...

    def start(self) -> None:
        """Connect to (or start) the cluster; idempotent."""
        ...

    def stop(self) -> None:
        """Disconnect. Applications keep running where the cluster outlives this process."""
        ...

    def check_supported(self, workload: Workload) -> None:
        """Raise `UnsupportedCapacity` when the cluster can never host all of `workload` at
        once (whatever else runs on it), naming the resource, the need and what it has."""
        ...

    def shortfall(self, workload: Workload) -> str | None:
        """None when the cluster's free resources can start `workload` now; else what it
        waits for ("waiting for 2 CPUs: 0.5 of 8 free"). Resources other applications
        hold are what make the difference; nothing is reserved by asking."""
        ...

    def deploy(self, spec: AppSpec) -> None:
        """Start deploying, without waiting. No-op when the name exists and is neither
        DELETING nor FAILED; a FAILED application is deployed again."""
        ...

    def status(self, name: str) -> AppStatus | None:
        """The application's status; None when there is no such application."""
        ...

    def list_apps(self, prefix: str) -> dict[str, AppStatus]:
        """Every application whose name starts with `prefix`, by name."""
        ...

    def delete(self, name: str) -> None:
        """Start deleting, without waiting; no error when the application is missing."""
        ...

    def handle(self, name: str) -> Any:
        """A Ray Serve `DeploymentHandle` of the application's ingress deployment.
        Raises `AppNotFound` when there is no such application."""
        ...

    def logs(self, name: str) -> str:
        """Recent log lines of the application's replicas (best effort; "" if none)."""
        ...
