"""The states of an endpoint and of its served entities, with exactly Databricks' spellings.

`EndpointState` is what the management API reports (`ready`, `config_update`); a served
entity's `ServedEntityState` is the reconciler's last observation of its Serve application.
`Deployments` is what the reconciler keeps per endpoint between ticks: the state of every
application it watches, and when each retired application may be deleted.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Ready(StrEnum):
    READY = "READY"
    NOT_READY = "NOT_READY"


class ConfigUpdate(StrEnum):
    NOT_UPDATING = "NOT_UPDATING"
    IN_PROGRESS = "IN_PROGRESS"
    UPDATE_FAILED = "UPDATE_FAILED"
    UPDATE_CANCELED = "UPDATE_CANCELED"


class Deployment(StrEnum):
    CREATING = "DEPLOYMENT_CREATING"
    READY = "DEPLOYMENT_READY"
    FAILED = "DEPLOYMENT_FAILED"
    ABORTED = "DEPLOYMENT_ABORTED"
    RECOVERING = "DEPLOYMENT_RECOVERING"


class EndpointState(BaseModel):
    model_config = ConfigDict(frozen=True)

    ready: Ready = Field(description="READY once every served entity of the live config runs")
    config_update: ConfigUpdate = Field(
        description="IN_PROGRESS while a new config rolls out; UPDATE_FAILED when it could not"
    )


class ServedEntityState(BaseModel):
    model_config = ConfigDict(frozen=True)

    deployment: Deployment
    deployment_state_message: str = Field(default="", description="why, when not READY")


CREATING = ServedEntityState(deployment=Deployment.CREATING, deployment_state_message="Creating")
READY = ServedEntityState(deployment=Deployment.READY)


class Deployments(BaseModel):
    """The reconciler's record of an endpoint's Serve applications, by application name."""

    model_config = ConfigDict(frozen=True)

    states: dict[str, ServedEntityState] = Field(
        default_factory=dict, description="last observed state of each application"
    )
    retiring: dict[str, int] = Field(
        default_factory=dict,
        description="applications no config serves any more: when each may be deleted (epoch "
        "ms), after in-flight requests had their grace period",
    )

    def state(self, app_name: str) -> ServedEntityState:
        return self.states.get(app_name, CREATING)
