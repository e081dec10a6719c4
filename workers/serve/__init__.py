"""Ray Serve hosting of the engine: `WorkerAppConfig` (typed, validated), the `LLMServer`
replica class (one engine per replica, streaming `generate`, `check_health`, graceful
drain), and the pure builder `build_app(config) -> ray.serve.Application`. A replica may
span several devices (`shards`), sharded by `workers.parallel`.
"""

from workers.serve.app import build_app, deployment_options
from workers.serve.config import AutoscalingSettings, WorkerAppConfig
from workers.serve.server import LLMServer, build_async_engine

__all__ = [
    "AutoscalingSettings",
    "LLMServer",
    "WorkerAppConfig",
    "build_app",
    "build_async_engine",
    "deployment_options",
]
