"""Typed control-plane settings (pydantic-settings, `MOESERVE_` env prefix, `__` for nesting).

Built once by `moeserve run` (or a test) and passed to `create_app(settings)`; nothing
reads the environment at import time. Every field is documented in docs/operations.md.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from billing.settings import BillingSettings, Cloud
from control_plane.budgets.settings import BudgetSettings
from control_plane.cloud_settings import CloudSettings
from control_plane.endpoints.config import Task
from workers.engine.config import EngineConfig

SHARED_PREFIX = "databricks-"
MAX_TOKEN_LIFETIME_S = 100 * 365 * 86_400  # longer expiry dates overflow


class SharedEndpoint(BaseModel):
    """A platform-provided pay-per-token endpoint, visible and queryable from every
    workspace, managed only by account admins."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description=f"must start with {SHARED_PREFIX!r}")
    entity_name: str = Field(description="a built-in preset, e.g. dbrx-tiny")
    entity_version: str = "1"
    workload_size: Literal["Small", "Medium", "Large"] = "Small"
    scale_to_zero_enabled: bool = False
    task: Task = Field(default=Task.CHAT, description="what the endpoint answers")

    @field_validator("name")
    @classmethod
    def _reserved_prefix(cls, name: str) -> str:
        if not name.startswith(SHARED_PREFIX):
            raise ValueError(f"shared endpoint names start with {SHARED_PREFIX!r}: {name!r}")
        return name


SYSTEM_MODEL_NAME = re.compile(r"[a-z0-9_]+\.[a-z0-9_]+\.[A-Za-z0-9_-]{1,100}")  # a.b.c


class SystemModel(BaseModel):
    """What a Databricks system model name (`system.ai.dbrx_instruct`) serves here: a
    built-in preset, or a checkpoint directory the operator provides. Clients written for
    Databricks Foundation Model APIs name these models unchanged."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="the one version served")
    preset: str | None = Field(default=None, description="a built-in preset, e.g. dbrx-tiny")
    checkpoint: Path | None = Field(
        default=None, description="a checkpoint directory (config.json, safetensors, tokenizer)"
    )

    @model_validator(mode="after")
    def _one_target(self) -> SystemModel:
        if (self.preset is None) == (self.checkpoint is None):
            raise ValueError("give exactly one of preset or checkpoint")
        if self.preset is not None:
            from workers.model.presets import PRESETS

            spec = PRESETS.get(self.preset)
            if spec is None or not spec.random_weights:
                servable = sorted(name for name, s in PRESETS.items() if s.random_weights)
                raise ValueError(
                    f"preset {self.preset!r} is not a built-in model with weights of its own; "
                    f"choose one of {', '.join(servable)} or give a checkpoint"
                )
        return self


def default_system_models() -> dict[str, SystemModel]:
    """The embedded default: Databricks' DBRX Instruct name (version 3) serves the built-in
    random-weight `dbrx-tiny`, so Databricks clients run unchanged against a laptop install.
    Production maps it to the real checkpoint (`system_models` setting)."""
    return {"system.ai.dbrx_instruct": SystemModel(version="3", preset="dbrx-tiny")}


class WorkerDefaults(BaseModel):
    """How served entities turn into Ray Serve replicas on this platform."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: EngineConfig = Field(
        default_factory=EngineConfig,
        description="each replica's engine: KV-cache capacity, batching limits",
    )
    concurrency_per_replica: int = Field(
        default=16,
        ge=1,
        description="requests one replica serves at its target latency; workload sizes "
        "(Small 4, Medium 16, Large 64 concurrent requests) divide by it into replicas",
    )
    cpus_per_shard: float = Field(default=1.0, gt=0, description="Ray CPUs per device shard")
    threads_per_shard: int | None = Field(default=None, ge=1, description="torch threads")
    max_ongoing_requests: int = Field(default=256, ge=1, description="in flight per replica")
    downscale_delay_s: float = Field(default=300, ge=0, description="idle time before parking")


class GatewaySettings(BaseModel):
    """The query path: caching, waits, queues and the usage ledger's group commit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    guard_model_endpoint: str | None = Field(
        default=None,
        description="a shared chat endpoint (in shared_endpoints) whose model judges the "
        "safety and valid_topics guardrails; none: those guardrails are refused",
    )

    lookup_cache_ttl_s: float = Field(
        default=2.0,
        ge=0,
        description="how long a token's caller and an endpoint's routing are reused on the "
        "query path (a revoked token or a config change takes effect within this; 0: off)",
    )
    scale_from_zero_timeout_s: float = Field(
        default=120,
        gt=0,
        description="how long a query to a parked (scaled-to-zero) entity waits for a replica "
        "before it gets 503 with Retry-After",
    )
    first_token_timeout_s: float = Field(
        default=60,
        gt=0,
        description="a running replica that yields nothing for this long counts as failed "
        "(fallback may retry elsewhere)",
    )
    stream_idle_timeout_s: float = Field(
        default=60,
        gt=0,
        description="after the first token, a replica that sends nothing for this long is "
        "taken as stuck (frozen, not dead: a dead one is noticed at once): the stream ends "
        "with an error event, its tokens so far are billed, and the next query gets a fresh "
        "handle",
    )
    max_queued_requests: int = Field(
        default=64,
        ge=0,
        description="requests one control-plane process queues per served entity beyond "
        "what its replicas take (max_replicas x max_ongoing_requests); past it: 503 with "
        "Retry-After",
    )
    retry_after_s: int = Field(default=1, ge=1, description="Retry-After when saturated")
    wake_retry_after_s: int = Field(
        default=30, ge=1, description="Retry-After when a parked entity did not wake in time"
    )
    usage_batch_max: int = Field(default=512, ge=1, description="usage rows per commit")
    usage_checkpoint_tokens: int = Field(
        default=16,
        ge=1,
        description="a stream's delivered usage is checkpointed (for billing after a crash) "
        "at least every this many completion tokens",
    )
    usage_checkpoint_interval_s: float = Field(
        default=0.5,
        gt=0,
        description="... and at the first token delivered this long after its last "
        "checkpoint; a non-streaming request still running this long after admission is "
        "put on record too",
    )
    usage_checkpoint_stale_s: float = Field(
        default=60,
        ge=2,
        description="an open request's checkpoint not refreshed for this long belongs to a "
        "dead process and is billed from its last checkpoint (status 520); each process "
        "refreshes its own every quarter of this. Must exceed the clock skew between "
        "control planes sharing a database and their worst database stall",
    )
    usage_reconnect_timeout_s: float = Field(
        default=10,
        ge=0,
        description="while the database cannot be reached (a restart, a failover), how long "
        "a batch of usage rows keeps retrying on fresh connections (at once, then with "
        "backoff up to 1 s) before its requests fail; 0: one immediate retry. Keep it well "
        "under usage_checkpoint_stale_s",
    )
    inference_table_max_bytes: int = Field(
        default=65536, ge=256, description="request/response payload cap in inference tables"
    )
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="largest query body accepted (bytes); larger ones get 413 before they "
        "are read (from Content-Length) or as soon as the bytes read pass it",
    )
    stats_interval_s: float = Field(
        default=5.0, gt=0, description="how often replica engine stats are sampled for /metrics"
    )
    metrics_require_auth: bool = Field(
        default=True,
        description="/metrics needs an account admin's bearer token (Prometheus "
        "`authorization` in the scrape config); false: open to anyone who can reach it",
    )

    @model_validator(mode="after")
    def _reconnect_within_stale(self) -> GatewaySettings:
        if self.usage_reconnect_timeout_s * 2 > self.usage_checkpoint_stale_s:
            raise ValueError(
                f"gateway.usage_reconnect_timeout_s ({self.usage_reconnect_timeout_s}) must be "
                f"at most half of gateway.usage_checkpoint_stale_s "
                f"({self.usage_checkpoint_stale_s}): a process waiting out a database outage "
                "must not look dead to the others"
            )
        return self


class RedisUnavailable(StrEnum):
    """What a query to a rate-limited endpoint gets while Redis cannot be reached."""

    FAIL_CLOSED = "fail_closed"  # 503 with Retry-After: no query escapes its limits
    FAIL_OPEN = "fail_open"  # admitted under this process's own counters


class RateLimitSettings(BaseModel):
    """The AI-gateway rate limits' counters in Redis (`redis_url`) when Redis is unreachable
    (see `control_plane.query.ratelimit.outage`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    redis_unavailable: RedisUnavailable = Field(
        default=RedisUnavailable.FAIL_CLOSED,
        description="fail_closed (default): queries to endpoints with rate limits get 503 "
        "with Retry-After while Redis is unreachable; fail_open: they are admitted under "
        "counters of this process alone (each process enforces every limit on its own, "
        "so N processes admit up to N times a limit) until Redis is back",
    )
    redis_recheck_s: float = Field(
        default=1.0,
        gt=0,
        description="while Redis is unreachable, one query every this many seconds tries it "
        "again; the others get redis_unavailable's answer at once, without waiting for a "
        "connection",
    )


class EnvironmentSettings(BaseModel):
    """What served entities may put in their replicas' environment (see
    `control_plane.endpoints.environment`)."""

    allowed: list[str] = Field(
        default_factory=lambda: ["APP_*"],
        description="names (or NAME_PREFIX* patterns) a served entity's environment_vars may "
        "set; default APP_* only. Widen with care: variables such as LD_PRELOAD, PYTHON*, "
        "BROWSER, RAY_*, CUDA_*, NCCL_* or OMP_* let an endpoint manager run code as the "
        "serving host's user",
    )
    secrets_dir: Path | None = Field(
        default=None,
        description="where {{secrets/<scope>/<key>}} references resolve: the file "
        "<secrets_dir>/<workspace id>/<scope>/<key>; default none (references are refused)",
    )


class RayListen(StrEnum):
    LOOPBACK = "loopback"
    NETWORK = "network"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MOESERVE_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    data_dir: Path = Field(
        default=Path(".moeserve"), description="where the default SQLite database lives"
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db; "
        "default: a SQLite file in data_dir",
    )
    model_roots: list[Path] = Field(
        default_factory=lambda data: [Path(data.get("data_dir", ".moeserve")) / "models"],
        description="directories registered checkpoints must lie in, compared after symlinks "
        "and '..' are resolved; default: a models/ folder in data_dir; [] allows presets only",
    )
    host: str = "127.0.0.1"
    trusted_proxies: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="addresses (or networks) of reverse proxies whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed; the client address they give is what logs and the "
        "audit log record. Default: none, so the peer address is recorded as it is",
    )
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str | None = Field(
        default=None, description="URL clients use, when it differs from http://host:port"
    )
    ray_address: str | None = Field(
        default=None, description="attach to this Ray cluster; default: start a local one"
    )
    ray_num_cpus: int | None = Field(default=None, ge=1, description="CPUs of a local Ray")
    ray_listen: RayListen = Field(
        default=RayListen.LOOPBACK,
        description="where a local Ray (one moeserve starts, no ray_address) listens: "
        "loopback (default; nothing outside this machine can reach its ports) or network "
        "(its node address, for worker machines that join it with `ray start --address`)",
    )
    shutdown_grace_s: int = Field(
        default=30,
        ge=0,
        description="on SIGTERM or SIGINT: how long in-flight requests get to finish before "
        "they are cancelled (streams end with an error event); then usage rows are flushed "
        "and a local Ray is stopped",
    )
    admin_token: SecretStr | None = Field(
        default=None, description="the bootstrap admin's token; default: generated, printed once"
    )
    max_token_lifetime_s: int | None = Field(
        default=90 * 86_400,
        gt=0,
        le=MAX_TOKEN_LIFETIME_S,
        description="the longest lifetime a token minted through the API may have (seconds; "
        "default 90 days); a longer lifetime_seconds is refused, an absent one gets this. "
        "'none': unlimited. The bootstrap admin's token is exempt",
    )
    account_name: str = "moeserve"
    workspace_name: str = "default"
    admin_user_name: str = "admin"
    cloud: Cloud = Field(
        default="local",
        description="the cloud new workspaces live in unless created with another one "
        "(its region: billing.region); aws, gcp or azure must be configured under clouds",
    )
    clouds: CloudSettings = Field(default_factory=CloudSettings)
    shared_endpoints: list[SharedEndpoint] = Field(
        default_factory=lambda: [
            SharedEndpoint(name="databricks-dbrx-tiny", entity_name="dbrx-tiny"),
            SharedEndpoint(
                name="databricks-dbrx-tiny-embeddings",
                entity_name="dbrx-tiny",
                task=Task.EMBEDDINGS,
            ),
        ]
    )
    system_models: dict[str, SystemModel] = Field(
        default_factory=default_system_models,
        description="Databricks system model names (catalog.schema.model) and what they serve",
    )
    workers: WorkerDefaults = Field(default_factory=WorkerDefaults)
    run_reconciler: bool = Field(default=True, description="drive endpoints in this process")
    reconcile_interval_s: float = Field(default=1.0, gt=0)
    deployment_timeout_s: float = Field(
        default=900, gt=0, description="a served entity not ready by then is DEPLOYMENT_FAILED"
    )
    retire_grace_s: float = Field(
        default=10,
        ge=0,
        description="after a config update moves traffic, old apps finish in-flight requests "
        "for this long before they are deleted",
    )
    lease_ttl_s: float = Field(
        default=10,
        gt=0,
        description="how long one control plane owns an endpoint's reconcile without renewing "
        "it (renewed every tick; a killed process's endpoints move on after this)",
    )
    query_timeout_s: float = Field(default=300, gt=0, description="per request, per replica")
    access_log: bool = Field(
        default=False,
        description="log every HTTP request (uvicorn's access log); off by default: the "
        "usage ledger records every query, and the log line costs throughput",
    )
    redis_url: str | None = Field(
        default=None,
        description="redis://host:port/db shared by every control-plane process for rate "
        "limits; default: in-process counters (one process)",
    )
    ratelimit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    billing: BillingSettings = Field(default_factory=BillingSettings)
    environment: EnvironmentSettings = Field(default_factory=EnvironmentSettings)
    budgets: BudgetSettings = Field(default_factory=BudgetSettings)

    @field_validator("max_token_lifetime_s", mode="before")
    @classmethod
    def _unlimited(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("none", "null", "unlimited"):
            return None
        return value

    @model_validator(mode="after")
    def _guard_model_is_a_shared_chat_endpoint(self) -> Settings:
        name = self.gateway.guard_model_endpoint
        chats = [e.name for e in self.shared_endpoints if e.task is Task.CHAT]
        if name is not None and name not in chats:
            raise ValueError(
                f"gateway.guard_model_endpoint names {name!r}, which is no shared chat "
                f"endpoint; use one of {chats} (shared_endpoints)"
            )
        return self

    @model_validator(mode="after")
    def _grace_outlives_cached_routes(self) -> Settings:
        if self.retire_grace_s < self.gateway.lookup_cache_ttl_s:
            raise ValueError(
                f"retire_grace_s ({self.retire_grace_s}) must be at least "
                f"gateway.lookup_cache_ttl_s ({self.gateway.lookup_cache_ttl_s}): queries routed "
                "from a cached config must still find the old apps"
            )
        return self

    @field_validator("system_models")
    @classmethod
    def _system_model_names(cls, models: dict[str, SystemModel]) -> dict[str, SystemModel]:
        for name in models:
            if not SYSTEM_MODEL_NAME.fullmatch(name):
                raise ValueError(
                    f"system_models: {name!r} is not a three-part name such as "
                    "system.ai.dbrx_instruct"
                )
        return models

    @model_validator(mode="after")
    def _region_of_the_cloud(self) -> Settings:
        from billing.skus import UnknownRegion, region

        try:
            found = region(self.billing_region())
        except UnknownRegion as exc:
            raise ValueError(f"billing.region: {exc}") from None
        if found.cloud != self.cloud:
            raise ValueError(
                f"billing.region {self.billing_region()!r} is a {found.cloud} region; "
                f"this installation's cloud is {self.cloud!r}"
            )
        return self

    @model_validator(mode="after")
    def _cloud_is_configured(self) -> Settings:
        if self.cloud != "local" and self.cloud not in self.clouds.configured():
            raise ValueError(
                f"cloud {self.cloud!r}: configure it under clouds.{self.cloud} (where its node "
                "groups run), or keep cloud 'local' and create cloud workspaces explicitly"
            )
        return self

    def billing_region(self) -> str:
        return self.billing.region_in(self.cloud)

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'moeserve.db').resolve()}"

    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"
