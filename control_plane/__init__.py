"""The control plane: a FastAPI app with the Databricks-compatible management API, the
OpenAI-compatible query gateway, tenancy and auth, the model registry, and the reconciler
that drives endpoints from desired to actual state on a provider. `create_app(settings)`
builds it; `moeserve run` (`control_plane.cli`) serves it.

The exports load lazily, so `moeserve run` can set process-wide Ray Serve options
(`control_plane.process_env`) before anything imports `ray.serve`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from control_plane.app import create_app
    from control_plane.settings import Settings

__all__ = ["Settings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from control_plane.app import create_app

        return create_app
    if name == "Settings":
        from control_plane.settings import Settings

        return Settings
    raise AttributeError(f"module 'control_plane' has no attribute {name!r}")
