"""Deployment providers: the `Provider` interface (deploy, status, list, delete, handle,
logs of named Ray Serve applications), its status types, and `LocalRayProvider`, which hosts
the applications on a local Ray instance or an existing Ray cluster.
"""

from deploy.providers.base import (
    AppNotFound,
    AppPhase,
    AppSpec,
    AppStatus,
    Provider,
    UnsupportedCapacity,
)
from deploy.providers.local import LocalRayProvider

__all__ = [
    "AppNotFound",
    "AppPhase",
    "AppSpec",
    "AppStatus",
    "LocalRayProvider",
    "Provider",
    "UnsupportedCapacity",
]
