"""`LocalRayProvider`: Ray Serve applications on a Ray cluster this process connects to.

Without an address it starts a local Ray instance (which lives as long as this process);
with one it attaches to an existing cluster, e.g. a GPU cluster. Serve runs without its
HTTP proxy: the control plane calls the applications through `DeploymentHandle`s.

Status, replica counts and log file paths come from the Serve controller's instance
details (one call answers for every application); that call is bounded by `timeout_s`,
so a wedged controller raises `TimeoutError` rather than hanging the caller's thread.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve.api import _run
from ray.serve.context import _get_global_client
from ray.serve.schema import ApplicationStatus

from deploy.clouds.base import NODE_RESOURCE_PREFIX
from deploy.providers.base import (
    AppNotFound,
    AppPhase,
    AppSpec,
    AppStatus,
    ReplicaGroup,
    UnsupportedCapacity,
    Workload,
    replica_shape,
)
from deploy.providers.ray_capacity import never_fits, node_capacity, waiting_for
from deploy.providers.serve_details import AppView
from workers.serve.app import build_app
from workers.serve.server import EngineFactory

LOG_TAIL_LINES = 200
_LOG_TAIL_BYTES = 256 * 1024  # read no more than this from the end of each log file
_MESSAGE_MAX_CHARS = 1000

_PHASES = {
    ApplicationStatus.NOT_STARTED: AppPhase.DEPLOYING,
    ApplicationStatus.DEPLOYING: AppPhase.DEPLOYING,
    ApplicationStatus.RUNNING: AppPhase.RUNNING,
    ApplicationStatus.DEPLOY_FAILED: AppPhase.FAILED,
    ApplicationStatus.UNHEALTHY: AppPhase.UNHEALTHY,
    ApplicationStatus.DELETING: AppPhase.DELETING,
}
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_TRACEBACK_START = "Traceback (most recent call last):"


class LocalRayProvider:
    name = "local"

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        namespace: str = "moeserve",
        *,
        timeout_s: float = 30.0,
        engine_factory: EngineFactory | None = None,
    ) -> None:
        """`engine_factory` replaces the model engine in every replica (benchmarks of the
        serving path use `workers.testing.instant`); None: the real engine."""
        self.address = address
        self.engine_factory = engine_factory
        self.num_cpus = num_cpus
        self.namespace = namespace
        self.timeout_s = timeout_s
        self._started = False
        self._owns_ray = False  # True when start() called ray.init, so stop() shuts it down
        self._lock = threading.Lock()  # start/stop and the handle cache
        self._deploy_lock = threading.Lock()  # deploy's check-then-act
        self._handles: dict[str, Any] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            if not ray.is_initialized():
                init_args: dict[str, Any] = {
                    # No address: a new local instance, never a cluster that `ray start`
                    # left on this machine (which a bare `ray.init()` would join).
                    "address": self.address or "local",
                    "namespace": self.namespace,
                    "include_dashboard": False,
                    "log_to_driver": False,
                }
                if self.address is None and self.num_cpus is not None:
                    init_args["num_cpus"] = self.num_cpus  # only a new local instance takes it
                ray.init(**init_args)
                self._owns_ray = True
            # No HTTP proxy: requests arrive through handles. A Serve instance that is
            # already running (started by someone else) is reused as it is.
            serve.start(proxy_location="Disabled")
            self._started = True

    def stop(self) -> None:
        with self._lock:
            self._handles.clear()
            if self._owns_ray:
                ray.shutdown()
                self._owns_ray = False
            self._started = False

    # -- capacity --------------------------------------------------------------------------

    def check_supported(self, workload: Workload) -> None:
        """Refuse what this cluster can never host (`ray_capacity.never_fits`): what other
        applications hold now does not count here; `shortfall` tells that. A group placed
        in a cloud is refused: no cloud is configured when this provider runs alone."""
        self._require_started()
        _refuse_placed(workload.placed())
        nodes = [node_capacity(node["Resources"]) for node in ray.nodes() if node["Alive"]]
        cluster = f"the Ray cluster at {self.address}" if self.address else "the local Ray"
        problem = never_fits(workload, nodes, cluster)
        if problem is not None:
            raise UnsupportedCapacity(problem)

    def shortfall(self, workload: Workload) -> str | None:
        self._require_started()
        return waiting_for(workload, _free_per_node(), node_capacity(ray.cluster_resources()))

    # -- applications ----------------------------------------------------------------------

    def deploy(self, spec: AppSpec) -> None:
        if spec.placement is not None:  # never deployed here instead of in its cloud
            _refuse_placed(
                (ReplicaGroup(spec.name, replica_shape(spec.worker), 1, spec.placement),)
            )
        with self._deploy_lock:  # no second deploy of the same name between check and act
            current = self.status(spec.name)
            if current is not None and current.phase not in (AppPhase.DELETING, AppPhase.FAILED):
                return  # the name encodes the config: nothing to change
            if spec.worker.node_resource is None:  # else its node group brings the capacity
                self.check_supported(
                    Workload((ReplicaGroup(spec.name, replica_shape(spec.worker), 1),))
                )
            with self._lock:
                self._handles.pop(spec.name, None)
            _run(
                build_app(spec.worker, self.engine_factory),
                _blocking=False,
                name=spec.name,
                route_prefix=None,
            )

    def status(self, name: str) -> AppStatus | None:
        app = self._app_details(name)
        return None if app is None else app_status(app)

    def list_apps(self, prefix: str) -> dict[str, AppStatus]:
        raw_apps: dict[str, Any] = self._serve_details()["applications"]
        return {
            name: app_status(AppView.model_validate(raw))
            for name, raw in raw_apps.items()
            if name.startswith(prefix)
        }

    def delete(self, name: str) -> None:
        with self._lock:
            self._handles.pop(name, None)
        # What `serve.delete(name, _blocking=False)` does, but waiting (bounded) until the
        # controller has taken the order, so that status() shows DELETING right after.
        # A missing name is fine for Serve too.
        deleting = self._controller().delete_apps.remote([name])
        ray.get(deleting, timeout=self.timeout_s)

    def handle(self, name: str) -> Any:
        with self._lock:
            cached = self._handles.get(name)
        if cached is not None:
            return cached
        # One handle per application and process: each new handle has its own router.
        controller = self._controller()
        ingress = ray.get(
            controller.get_ingress_deployment_name.remote(name), timeout=self.timeout_s
        )
        if ingress is None:
            raise AppNotFound(f"no application named {name!r} on the {self.name} provider")
        handle = serve.get_app_handle(name)
        with self._lock:
            return self._handles.setdefault(name, handle)

    def logs(self, name: str) -> str:
        app = self._app_details(name)
        logs_dir = _local_logs_dir()
        if app is None or logs_dir is None:
            return ""
        replicas = [
            replica
            for deployment in app.deployments.values()
            for replica in (*deployment.recent_dead_replicas, *deployment.replicas)
            if replica.log_file_path
        ]
        # Paths are relative to the node's log directory; a replica on another node has
        # no file here and is skipped (best effort).
        files = [logs_dir / str(replica.log_file_path).lstrip("/") for replica in replicas]
        existing = sorted((f for f in files if f.is_file()), key=lambda f: f.stat().st_mtime)
        tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        for path in existing:
            tail.append(f"==> {path.name} <==")
            tail.extend(_tail_lines(path))
        return "\n".join(tail)

    # -- Serve controller ------------------------------------------------------------------

    def _require_started(self) -> None:
        if not self._started:
            raise RuntimeError(f"{type(self).__name__}.start() has not been called")

    def _controller(self) -> Any:
        self._require_started()
        client = _get_global_client()  # raises RayServeException when no controller runs
        assert client is not None
        return client._controller

    def _serve_details(self) -> dict[str, Any]:
        ref = self._controller().get_serve_instance_details.remote()
        details: dict[str, Any] = ray.get(ref, timeout=self.timeout_s)
        return details

    def _app_details(self, name: str) -> AppView | None:
        raw = self._serve_details()["applications"].get(name)
        return None if raw is None else AppView.model_validate(raw)


def _refuse_placed(groups: tuple[ReplicaGroup, ...]) -> None:
    for group in groups:
        assert group.placement is not None
        raise UnsupportedCapacity(
            f"served entity {group.name!r} runs in {group.placement.cloud}, which is not "
            f"configured on this installation (clouds.{group.placement.cloud})"
        )


def app_status(app: AppView) -> AppStatus:
    """Our view of a Serve application: phase, a readable message, replica counts."""
    ingress = app.ingress
    running = 0 if ingress is None else sum(r.state == "RUNNING" for r in ingress.replicas)
    groups = sorted(r for r in app.custom_resources() if r.startswith(NODE_RESOURCE_PREFIX))
    return AppStatus(
        name=app.name,
        phase=_PHASES[app.status],
        message=_status_message(app),
        running_replicas=running,
        target_replicas=None if ingress is None else ingress.target_num_replicas,
        node_resource=groups[0] if groups else None,
    )


def summarize_failure(message: str) -> str:
    """A Serve status message made readable: colour codes gone and a traceback cut to the
    exception it ends in ("... failed to start 3 times ... ValueError: no such file")."""
    text = _ANSI_ESCAPE.sub("", message).strip()
    start = text.rfind(_TRACEBACK_START)
    if start >= 0:
        head = text[:start].split("Error:\n", 1)[0].strip()
        frames = text[start + len(_TRACEBACK_START) :].splitlines()
        # Frames and their source lines are indented; the exception starts at the first
        # unindented line and may span several lines.
        first = next((i for i, line in enumerate(frames) if line and not line[0].isspace()), 0)
        exception = " ".join(line.strip() for line in frames[first:] if line.strip())
        text = f"{head} {exception}".strip()
    if len(text) > _MESSAGE_MAX_CHARS:
        text = text[: _MESSAGE_MAX_CHARS - 3] + "..."
    return text


def _status_message(app: AppView) -> str:
    parts = [summarize_failure(app.message)] if app.message else []
    parts += [
        f"{name}: {summarize_failure(deployment.message)}"
        for name, deployment in app.deployments.items()
        if deployment.message
    ]
    return " ".join(parts)


def _free_per_node() -> list[dict[str, float]]:
    """What each node has free now. Ray has no public per-node view; without this one the
    cluster's free total stands for one node."""
    try:
        per_node = ray._private.state.available_resources_per_node()
    except AttributeError:
        return [node_capacity(ray.available_resources())]
    return [node_capacity(resources) for resources in per_node.values()]


def _local_logs_dir() -> Path | None:
    node = ray._private.worker._global_node  # None in Ray Client mode
    return None if node is None else Path(node.get_logs_dir_path())


def _tail_lines(path: Path) -> list[str]:
    with path.open("rb") as file:
        size = file.seek(0, 2)
        file.seek(max(0, size - _LOG_TAIL_BYTES))
        data = file.read()
    lines = data.decode(errors="replace").splitlines()
    if size > _LOG_TAIL_BYTES:
        lines = lines[1:]  # the first line read is likely cut
    return lines[-LOG_TAIL_LINES:]
