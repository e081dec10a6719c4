"""Ray Serve hosting of the engine: `WorkerAppConfig` (typed, validated), the `LLMServer`
replica class (one engine per replica, streaming `generate`, unary `complete` and `embed`,
`stats`, `check_health`, graceful drain; any `ServingEngine` may be injected), and the pure
builder `build_app(config) -> ray.serve.Application`. A replica may span several devices
(`shards`), sharded by `workers.parallel`.
"""

from workers.serve.app import build_app, deployment_options
from workers.serve.config import AutoscalingSettings, WorkerAppConfig
from workers.serve.server import EngineFactory, LLMServer, ServingEngine, build_async_engine

__all__ = [
    "AutoscalingSettings",
    "EngineFactory",
    "LLMServer",
    "ServingEngine",
    "WorkerAppConfig",
    "build_app",
    "build_async_engine",
    "deployment_options",
]
