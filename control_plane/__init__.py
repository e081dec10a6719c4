"""The control plane: a FastAPI app with the Databricks-compatible management API, the
OpenAI-compatible query gateway, tenancy and auth, the model registry, and the reconciler
that drives endpoints from desired to actual state on a provider. `create_app(settings)`
builds it; `moeserve run` (`control_plane.cli`) serves it."""

from control_plane.app import create_app
from control_plane.settings import Settings

__all__ = ["Settings", "create_app"]
