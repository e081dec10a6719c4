"""Pure reconcile decisions for one endpoint: given its stored row and the apps the
provider reports, what to deploy, what to delete and which state to record.

Kept free of I/O so every transition (create, roll, fail, time out, recover, retire)
is tested directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deploy.providers.base import AppPhase, AppStatus

READY = {"deployment": "DEPLOYMENT_READY", "deployment_state_message": ""}


@dataclass(frozen=True)
class EndpointSnapshot:
    """What the planner needs of an endpoint row (plain data)."""

    id: str
    config: dict[str, Any] | None
    pending_config: dict[str, Any] | None
    config_update: str
    deployments: dict[str, Any]
    update_started_ms: int | None


@dataclass
class Plan:
    deploy: list[dict[str, Any]] = field(default_factory=list)  # entities to deploy
    delete: list[str] = field(default_factory=list)  # app names
    deployments: dict[str, Any] = field(default_factory=dict)
    ready: str | None = None
    config_update: str | None = None
    promote: bool = False  # pending_config becomes config


def _entities(config: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [] if config is None else list(config["served_entities"])


def _state(status: AppStatus | None, *, recovering: bool = False) -> dict[str, str]:
    if status is None or status.phase == AppPhase.DEPLOYING:
        word = "DEPLOYMENT_RECOVERING" if recovering else "DEPLOYMENT_CREATING"
        message = status.message if status and status.message else "Starting replicas"
        return {"deployment": word, "deployment_state_message": message}
    if status.phase == AppPhase.RUNNING:
        return dict(READY)
    if status.phase == AppPhase.FAILED:
        return {"deployment": "DEPLOYMENT_FAILED", "deployment_state_message": status.message}
    return {
        "deployment": "DEPLOYMENT_RECOVERING",
        "deployment_state_message": status.message or status.phase.value,
    }


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
    pending = _entities(endpoint.pending_config) if endpoint.config_update == "IN_PROGRESS" else []
    wanted = {e["app_name"] for e in live} | {e["app_name"] for e in pending}

    # The live config: keep every app running (redeploy one that vanished).
    live_ok = True
    for entity in live:
        status = apps.get(entity["app_name"])
        if status is None or status.phase == AppPhase.FAILED:
            plan.deploy.append(entity)
        plan.deployments[entity["app_name"]] = _state(status, recovering=True)
        live_ok &= status is not None and status.phase == AppPhase.RUNNING

    if pending:
        _roll(endpoint, pending, apps, plan, now_ms, deployment_timeout_ms)
    if plan.promote:
        assert endpoint.pending_config is not None
        live_ok = True
        new_apps = {e["app_name"] for e in pending}
        for old in wanted - new_apps:  # retired: traffic has moved; delete after the grace
            plan.deployments[old] = {"retire_at_ms": now_ms + retire_grace_ms}
        wanted = new_apps
    elif pending and plan.config_update == "UPDATE_FAILED":
        for entity in pending:
            if entity["app_name"] not in {e["app_name"] for e in live}:
                plan.delete.append(entity["app_name"])
        wanted = {e["app_name"] for e in live}
    if endpoint.pending_config is not None and endpoint.config_update != "IN_PROGRESS":
        for entity in _entities(endpoint.pending_config):  # keep a failed update's messages
            name = entity["app_name"]
            if name not in plan.deployments and name in endpoint.deployments:
                plan.deployments[name] = endpoint.deployments[name]

    # Apps of this endpoint that no config wants: retire after their grace, then delete.
    for app in apps:
        if app in wanted or app in plan.delete:
            continue
        record = plan.deployments.get(app) or endpoint.deployments.get(app, {})
        retire_at = record.get("retire_at_ms")
        if retire_at is not None and retire_at > now_ms:
            plan.deployments[app] = {"retire_at_ms": retire_at}
        else:
            plan.delete.append(app)

    if endpoint.config is not None or plan.promote:
        plan.ready = "READY" if live_ok else "NOT_READY"
    else:
        plan.ready = "NOT_READY"
    return plan


def _roll(
    endpoint: EndpointSnapshot,
    pending: list[dict[str, Any]],
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
        name = entity["app_name"]
        status = apps.get(name)
        if status is None and name not in plan.deployments:
            plan.deploy.append(entity)
        state = plan.deployments.get(name) or _state(status)
        if status is not None and status.phase == AppPhase.FAILED:
            failed = True
        elif not (status is not None and status.phase == AppPhase.RUNNING):
            all_running = False
            if timed_out:
                state = {
                    "deployment": "DEPLOYMENT_FAILED",
                    "deployment_state_message": f"not ready after {deployment_timeout_ms / 1000:g}"
                    f" s (last state: {state['deployment_state_message']})",
                }
                failed = True
        plan.deployments[name] = state
    if failed:
        plan.config_update = "UPDATE_FAILED"
        plan.deploy = [e for e in plan.deploy if e not in pending]
    elif all_running:
        plan.promote = True
        plan.config_update = "NOT_UPDATING"
