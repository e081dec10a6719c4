"""The typed config of one served model: what to load, how to shard it, how to scale it.

Every field is described; the control plane fills it from an endpoint's served entity and
`build_app(config)` turns it into a Ray Serve application. Shape problems (shards that do
not divide the heads or experts, replica counts that contradict autoscaling) are rejected
here, before anything is deployed.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from workers.engine.config import EngineConfig
from workers.model.source import ModelSource
from workers.parallel.modes import ParallelMode, check_shardable

_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


class AutoscalingSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    min_replicas: int = Field(default=0, ge=0, description="0 allows scale to zero")
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: float = Field(
        default=32, gt=0, description="in-flight requests per replica the autoscaler aims for"
    )
    upscale_delay_s: float = Field(default=5, ge=0)
    downscale_delay_s: float = Field(default=300, ge=0, description="idle time before parking")

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})"
            )
        return self


class WorkerAppConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(default="llm", description="Ray Serve application and deployment name")
    model: ModelSource = Field(description="preset or registered checkpoint, dtype, seed")
    device: Literal["cpu", "cuda"] = Field(default="cpu", description="cuda: one GPU per shard")
    shards: int = Field(default=1, ge=1, le=16, description="devices one replica spans")
    parallel_mode: ParallelMode = Field(
        default="tensor",
        description="tensor: heads and expert hidden units split (best latency); "
        "expert: experts split, tokens dispatched by all-to-all (best at large batches)",
    )
    num_replicas: int | None = Field(
        default=1, ge=0, description="fixed replica count; None when autoscaling is set"
    )
    autoscaling: AutoscalingSettings | None = None
    max_ongoing_requests: int = Field(
        default=256, ge=1, description="requests in flight per replica (continuous batching)"
    )
    engine: EngineConfig = Field(default_factory=EngineConfig)
    cpus_per_shard: float = Field(default=1.0, gt=0, description="Ray CPUs each shard reserves")
    threads_per_shard: int | None = Field(
        default=None, ge=1, description="torch intra-op threads per shard (CPU)"
    )
    graceful_shutdown_timeout_s: float = Field(
        default=30, ge=0, description="time in-flight requests get to finish on shutdown"
    )
    health_check_period_s: float = Field(default=10, gt=0)
    node_resource: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.:-]{1,128}$",
        description="a custom Ray resource only the nodes of this app's cloud node group "
        "advertise (1 per node): each replica holds 1, so it runs there and one per node; "
        "None: any node",
    )
    environment_vars: dict[str, str] = Field(
        default_factory=dict,
        description="set in every replica's process environment (the control plane admits "
        "only allow-listed names; see control_plane.endpoints.environment)",
    )

    @field_validator("environment_vars")
    @classmethod
    def _plain_names(cls, variables: dict[str, str]) -> dict[str, str]:
        for name, value in variables.items():
            if not _ENV_NAME.fullmatch(name) or "\x00" in value:
                raise ValueError("environment variable names match ^[A-Z_][A-Z0-9_]*$, no NUL")
        return variables

    @model_validator(mode="after")
    def _consistent(self) -> WorkerAppConfig:
        if self.autoscaling is not None and self.num_replicas is not None:
            raise ValueError("set num_replicas or autoscaling, not both (num_replicas=None)")
        if self.autoscaling is None and self.num_replicas is None:
            raise ValueError("set num_replicas, or autoscaling with min/max replicas")
        if self.shards > 1 and self.model.preset is not None:
            check_shardable(self.model.args(), self.parallel_mode, self.shards)
        return self
