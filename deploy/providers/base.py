"""The provider interface: what every deployment target (local Ray, a cloud) offers.

A provider hosts named Ray Serve applications, one per served model configuration. The
caller chooses the application name and encodes the configuration in it, so "same name"
means "same config": `deploy` of an existing, healthy name is a no-op. Every method may
block on the cluster for a while; callers run them in a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from workers.serve.config import WorkerAppConfig


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


class UnsupportedCapacity(ValueError):
    """The provider cannot host this workload; raised before any deployment is attempted.
    The message says what to change."""


class AppNotFound(LookupError):
    """No application of that name exists on the provider."""


@dataclass(frozen=True)
class AppSpec:
    name: str  # the Serve application name, chosen by the caller; encodes the config
    worker: WorkerAppConfig


class Provider(Protocol):
    name: str  # "local", "aws", ...

    def start(self) -> None:
        """Connect to (or start) the cluster; idempotent."""
        ...

    def stop(self) -> None:
        """Disconnect. Applications keep running where the cluster outlives this process."""
        ...

    def check_supported(self, worker: WorkerAppConfig) -> None:
        """Raise `UnsupportedCapacity` when the cluster can never host `worker`."""
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
