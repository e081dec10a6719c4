"""Pure reconcile decisions for one endpoint: given its stored row and the apps the
provider reports, what to deploy, what to delete and which state to record.

Kept free of I/O so every transition (create, roll, fail, time out, recover, retire)
is tested directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from control_plane.endpoints.config import EndpointConfig, ServedEntity
from control_plane.endpoints.states import (
    READY,
    ConfigUpdate,
    Deployment,
    Deployments,
    Ready,
    ServedEntityState,
)
from deploy.providers.base import AppPhase, AppStatus


@dataclass(frozen=True)
class EndpointSnapshot:
    """What the planner needs of an endpoint row."""

    id: str
    config: EndpointConfig | None
    pending_config: EndpointConfig | None
    config_update: ConfigUpdate
    deployments: Deployments
    update_started_ms: int | None


@dataclass
class Plan:
    deploy: list[ServedEntity] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)  # app names
    states: dict[str, ServedEntityState] = field(default_factory=dict)  # by app name
    retiring: dict[str, int] = field(default_factory=dict)  # app name -> delete after (ms)
    ready: Ready | None = None
    config_update: ConfigUpdate | None = None
    promote: bool = False  # pending_config becomes config

    @property
    def deployments(self) -> Deployments:
        return Deployments(states=self.states, retiring=self.retiring)


def _entities(config: EndpointConfig | None) -> list[ServedEntity]:
    return [] if config is None else list(config.served_entities)


def _state(status: AppStatus | None, *, recovering: bool = False) -> ServedEntityState:
    if status is None or status.phase == AppPhase.DEPLOYING:
        word = Deployment.RECOVERING if recovering else Deployment.CREATING
        message = status.message if status and status.message else "Starting replicas"
        return ServedEntityState(deployment=word, deployment_state_message=message)
    if status.phase == AppPhase.RUNNING:
        if status.placement_note:  # where a cloud node group found its capacity
            return READY.model_copy(update={"deployment_state_message": status.placement_note})
        return READY
    if status.phase == AppPhase.FAILED:
        return ServedEntityState(
            deployment=Deployment.FAILED, deployment_state_message=status.message
        )
    return ServedEntityState(
        deployment=Deployment.RECOVERING,
        deployment_state_message=status.message or status.phase.value,
    )


def plan_endpoint(
    endpoint: EndpointSnapshot,
    apps: dict[str, AppStatus],
    *,
    now_ms: int,
    deployment_timeout_ms: int,
    retire_grace_ms: int,
) -> Plan:
    plan = Plan()
    live = _entities(endpoint.config)
    rolling = endpoint.config_update == ConfigUpdate.IN_PROGRESS
    pending = _entities(endpoint.pending_config) if rolling else []
    live_apps = {e.app_name for e in live}
    wanted = live_apps | {e.app_name for e in pending}

    # The live config: keep every app running (redeploy one that vanished).
    live_ok = True
    for entity in live:
        status = apps.get(entity.app_name)
        if status is None or status.phase == AppPhase.FAILED:
            plan.deploy.append(entity)
        plan.states[entity.app_name] = _state(status, recovering=True)
        live_ok &= status is not None and status.phase == AppPhase.RUNNING

    if pending:
        _roll(endpoint, pending, apps, plan, now_ms, deployment_timeout_ms)
    if plan.promote:
        live_ok = True
        new_apps = {e.app_name for e in pending}
        for old in wanted - new_apps:  # retired: traffic has moved; delete after the grace
            plan.states.pop(old, None)
            plan.retiring[old] = now_ms + retire_grace_ms
        wanted = new_apps
    elif pending and plan.config_update == ConfigUpdate.UPDATE_FAILED:
        plan.delete += [e.app_name for e in pending if e.app_name not in live_apps]
        wanted = live_apps
    if endpoint.pending_config is not None and not rolling:
        for entity in endpoint.pending_config.served_entities:  # keep a failed update's messages
            name = entity.app_name
            if name not in plan.states and name in endpoint.deployments.states:
                plan.states[name] = endpoint.deployments.states[name]

    # Apps of this endpoint that no config wants: retire after their grace, then delete.
    for app in apps:
        if app in wanted or app in plan.delete:
            continue
        retire_at = plan.retiring.get(app, endpoint.deployments.retiring.get(app))
        if retire_at is not None and retire_at > now_ms:
            plan.retiring[app] = retire_at
        else:
            plan.delete.append(app)

    if endpoint.config is not None or plan.promote:
        plan.ready = Ready.READY if live_ok else Ready.NOT_READY
    else:
        plan.ready = Ready.NOT_READY
    return plan


def _roll(
    endpoint: EndpointSnapshot,
    pending: list[ServedEntity],
    apps: dict[str, AppStatus],
    plan: Plan,
    now_ms: int,
    deployment_timeout_ms: int,
) -> None:
    started = endpoint.update_started_ms or now_ms
    timed_out = now_ms - started > deployment_timeout_ms
    failed = False
    all_running = True
    for entity in pending:
        name = entity.app_name
        status = apps.get(name)
        if status is None and name not in plan.states:
            plan.deploy.append(entity)
        state = plan.states.get(name) or _state(status)
        if status is not None and status.phase == AppPhase.FAILED:
            failed = True
        elif not (status is not None and status.phase == AppPhase.RUNNING):
            all_running = False
            if timed_out:
                last = state.deployment_state_message
                stored = endpoint.deployments.states.get(name)
                if status is None and stored is not None and stored.deployment_state_message:
                    last = stored.deployment_state_message  # why it was never deployed
                state = ServedEntityState(
                    deployment=Deployment.FAILED,
                    deployment_state_message=f"not ready after {deployment_timeout_ms / 1000:g}"
                    f" s (last state: {last})",
                )
                failed = True
        plan.states[name] = state
    if failed:
        plan.config_update = ConfigUpdate.UPDATE_FAILED
        plan.deploy = [e for e in plan.deploy if e not in pending]
    elif all_running:
        plan.promote = True
        plan.config_update = ConfigUpdate.NOT_UPDATING
