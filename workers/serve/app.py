"""`build_app(config)`: a pure builder from `WorkerAppConfig` to a Ray Serve application."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from workers.serve.config import WorkerAppConfig
from workers.serve.server import EngineFactory, LLMServer


def deployment_options(config: WorkerAppConfig) -> dict[str, Any]:
    """The Ray Serve deployment options that `config` implies (pure; tested directly)."""
    bundle: dict[str, float] = {"CPU": config.cpus_per_shard}
    if config.device == "cuda":
        bundle["GPU"] = 1
    options: dict[str, Any] = {
        "name": config.name,
        "max_ongoing_requests": config.max_ongoing_requests,
        "graceful_shutdown_timeout_s": config.graceful_shutdown_timeout_s,
        "health_check_period_s": config.health_check_period_s,
        "ray_actor_options": {"num_cpus": bundle["CPU"], "num_gpus": bundle.get("GPU", 0)},
    }
    if config.node_resource is not None:
        # The replica actor runs in bundle 0 of a sharded replica, so bundle 0 holds it too.
        options["ray_actor_options"]["resources"] = {config.node_resource: 1}
    if config.environment_vars:
        options["ray_actor_options"]["runtime_env"] = {"env_vars": dict(config.environment_vars)}
    if config.autoscaling is not None:
        scaling = config.autoscaling
        options["autoscaling_config"] = {
            "min_replicas": scaling.min_replicas,
            "max_replicas": scaling.max_replicas,
            "target_ongoing_requests": scaling.target_ongoing_requests,
            "upscale_delay_s": scaling.upscale_delay_s,
            "downscale_delay_s": scaling.downscale_delay_s,
        }
    else:
        options["num_replicas"] = config.num_replicas
    if config.shards > 1:
        # One bundle per device; the replica itself runs rank 0 in bundle 0.
        bundles = [dict(bundle) for _ in range(config.shards)]
        if config.node_resource is not None:
            bundles[0][config.node_resource] = 1
        options["placement_group_bundles"] = bundles
        options["placement_group_strategy"] = "STRICT_PACK"
    return options


def build_app(config: WorkerAppConfig, engine_factory: EngineFactory | None = None) -> Application:
    deployment = serve.deployment(**deployment_options(config))(LLMServer)
    return deployment.bind(config, engine_factory)
