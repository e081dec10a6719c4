"""An in-memory provider for API tests that need no model: apps start DEPLOYING and report
RUNNING after `ready_after` status reads, or FAILED when their model source is marked to
fail. It implements the same `Provider` protocol as the local Ray provider; the tests that
need real replicas use that one."""

from __future__ import annotations

import threading
from typing import Any

from deploy.providers.base import AppPhase, AppSpec, AppStatus, UnsupportedCapacity, Workload


class InstantProvider:
    name = "instant"

    def __init__(self, ready_after: int = 1, failing_models: frozenset[str] = frozenset()):
        self.ready_after = ready_after
        self.failing_models = failing_models
        self.apps: dict[str, dict[str, Any]] = {}
        self.deploy_calls: list[str] = []
        self.delete_calls: list[str] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def check_supported(self, workload: Workload) -> None:
        for group in workload.groups:
            if group.shape.gpus:
                raise UnsupportedCapacity(
                    f"served entity {group.name!r} needs GPUs; this test cluster has none"
                )

    def shortfall(self, workload: Workload) -> str | None:
        return None  # room for every CPU workload

    def deploy(self, spec: AppSpec) -> None:
        with self._lock:
            current = self.apps.get(spec.name)
            if current is not None and current["phase"] != AppPhase.FAILED:
                return
            self.deploy_calls.append(spec.name)
            self.apps[spec.name] = {"spec": spec, "reads": 0, "phase": AppPhase.DEPLOYING}

    def _status(self, name: str) -> AppStatus | None:
        app = self.apps.get(name)
        if app is None:
            return None
        app["reads"] += 1
        spec: AppSpec = app["spec"]
        model = spec.worker.model.preset or spec.worker.model.checkpoint or ""
        if app["phase"] == AppPhase.DEPLOYING and app["reads"] > self.ready_after:
            app["phase"] = AppPhase.FAILED if model in self.failing_models else AppPhase.RUNNING
        replicas = spec.worker.num_replicas or 0
        running = replicas if app["phase"] == AppPhase.RUNNING else 0
        message = f"replica constructor failed loading {model}" if app["phase"] == "FAILED" else ""
        return AppStatus(name, app["phase"], message, running, replicas)

    def status(self, name: str) -> AppStatus | None:
        with self._lock:
            return self._status(name)

    def list_apps(self, prefix: str) -> dict[str, AppStatus]:
        with self._lock:
            found = {n: self._status(n) for n in list(self.apps) if n.startswith(prefix)}
        return {n: s for n, s in found.items() if s is not None}

    def delete(self, name: str) -> None:
        with self._lock:
            if self.apps.pop(name, None) is not None:
                self.delete_calls.append(name)

    def handle(self, name: str) -> Any:
        raise LookupError(f"{name}: the instant provider runs no replicas")

    def logs(self, name: str) -> str:
        return f"logs of {name}\n" if name in self.apps else ""
