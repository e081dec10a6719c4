"""Deployment: turning an endpoint's capacity into running compute. `deploy.providers`
holds the `Provider` interface (named Ray Serve applications: deploy, status, list, delete,
handle, logs), its status and error types, and one provider per target — today
`LocalRayProvider` (a local Ray instance or an existing Ray cluster); cloud providers and
the GPU instance catalog come later. Never imports `control_plane`.
"""

from deploy.providers import (
    AppNotFound,
    AppPhase,
    AppSpec,
    AppStatus,
    LocalRayProvider,
    Provider,
    UnsupportedCapacity,
)

__all__ = [
    "AppNotFound",
    "AppPhase",
    "AppSpec",
    "AppStatus",
    "LocalRayProvider",
    "Provider",
    "UnsupportedCapacity",
]
