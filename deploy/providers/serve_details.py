"""The part of Ray Serve's instance details that the local provider reads, as small pydantic
models that ignore the rest.

Parsing the controller's answer into Serve's own `ApplicationDetails` builds each
deployment's full config on every call, router class pickling included; the reconciler asks
every second, so that cost was paid forever. These models read only status, messages,
replica states and log paths, with Serve's own status enum.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from ray.serve.schema import ApplicationStatus


class _Details(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ReplicaView(_Details):
    state: str
    log_file_path: str | None = None


class ActorOptionsView(_Details):
    resources: dict[str, float] | None = None


class DeploymentConfigView(_Details):
    ray_actor_options: ActorOptionsView | None = None


class DeploymentView(_Details):
    message: str = ""
    deployment_config: DeploymentConfigView | None = None
    target_num_replicas: int | None = None
    replicas: list[ReplicaView] = []
    recent_dead_replicas: list[ReplicaView] = []


class TopologyView(_Details):
    ingress_deployment: str | None = None


class AppView(_Details):
    """One application of `get_serve_instance_details()["applications"]`."""

    name: str
    status: ApplicationStatus
    message: str = ""
    deployments: dict[str, DeploymentView] = {}
    deployment_topology: TopologyView | None = None

    @property
    def ingress(self) -> DeploymentView | None:
        """The ingress deployment; None while Serve has not registered it yet."""
        topology = self.deployment_topology
        if topology is not None and topology.ingress_deployment in self.deployments:
            return self.deployments[topology.ingress_deployment]
        if len(self.deployments) == 1:
            return next(iter(self.deployments.values()))
        return None

    def custom_resources(self) -> set[str]:
        """The custom Ray resources its deployments' replicas hold (a node group's)."""
        found: set[str] = set()
        for deployment in self.deployments.values():
            config = deployment.deployment_config
            options = None if config is None else config.ray_actor_options
            if options is not None and options.resources:
                found |= set(options.resources)
        return found
