"""The reconciler's pure decisions, one transition per test."""

from __future__ import annotations

from typing import Any

from control_plane.endpoints.config import EndpointConfig, ServedEntity
from control_plane.endpoints.states import (
    ConfigUpdate,
    Deployment,
    Deployments,
    Ready,
    ServedEntityState,
)
from control_plane.reconciler.plan import EndpointSnapshot, plan_endpoint
from deploy.providers.base import AppPhase, AppStatus
from tests.control_plane.domain_factories import endpoint_config, served_entity

NOW = 1_000_000
TIMEOUT = 60_000
GRACE = 10_000


def entity(app: str, name: str = "e") -> ServedEntity:
    return served_entity(name, app_name=app)


def config(*entities: ServedEntity, version: int = 1) -> EndpointConfig:
    return endpoint_config(*entities, version=version)


def running(name: str) -> AppStatus:
    return AppStatus(name, AppPhase.RUNNING, "", 1, 1)


def snapshot(**fields: Any) -> EndpointSnapshot:
    values: dict[str, Any] = {
        "id": "ep",
        "config": None,
        "pending_config": None,
        "config_update": ConfigUpdate.NOT_UPDATING,
        "deployments": Deployments(),
        "update_started_ms": NOW,
    }
    values.update(fields)
    return EndpointSnapshot(**values)


def plan(endpoint: EndpointSnapshot, apps: dict[str, AppStatus], now: int = NOW) -> Any:
    return plan_endpoint(
        endpoint, apps, now_ms=now, deployment_timeout_ms=TIMEOUT, retire_grace_ms=GRACE
    )


def test_new_endpoint_deploys_its_entities_and_is_not_ready() -> None:
    result = plan(
        snapshot(pending_config=config(entity("a")), config_update=ConfigUpdate.IN_PROGRESS), {}
    )
    assert [e.app_name for e in result.deploy] == ["a"]
    assert result.ready == Ready.NOT_READY and not result.promote
    assert result.deployments.state("a").deployment == Deployment.CREATING


def test_pending_config_is_promoted_once_every_app_runs() -> None:
    endpoint = snapshot(pending_config=config(entity("a")), config_update=ConfigUpdate.IN_PROGRESS)
    result = plan(endpoint, {"a": running("a")})
    assert result.promote and result.config_update == ConfigUpdate.NOT_UPDATING
    assert result.ready == Ready.READY and not result.deploy and not result.delete


def test_rollout_keeps_old_app_until_new_runs_then_retires_it_after_grace() -> None:
    endpoint = snapshot(
        config=config(entity("old")),
        pending_config=config(entity("new"), version=2),
        config_update=ConfigUpdate.IN_PROGRESS,
    )
    deploying = plan(endpoint, {"old": running("old")})
    assert [e.app_name for e in deploying.deploy] == ["new"]
    assert deploying.ready == Ready.READY and not deploying.delete  # old keeps serving

    promoted = plan(endpoint, {"old": running("old"), "new": running("new")})
    assert promoted.promote and not promoted.delete
    assert promoted.deployments.retiring == {"old": NOW + GRACE}
    assert "old" not in promoted.deployments.states

    after = snapshot(config=config(entity("new"), version=2), deployments=promoted.deployments)
    apps = {"old": running("old"), "new": running("new")}
    assert plan(after, apps, now=NOW + GRACE - 1).delete == []
    assert plan(after, apps, now=NOW + GRACE + 1).delete == ["old"]


def test_failed_app_fails_the_update_and_its_app_is_removed_old_config_serves() -> None:
    endpoint = snapshot(
        config=config(entity("old")),
        pending_config=config(entity("new"), version=2),
        config_update=ConfigUpdate.IN_PROGRESS,
    )
    failed = AppStatus("new", AppPhase.FAILED, "ValueError: no such checkpoint", 0, None)
    result = plan(endpoint, {"old": running("old"), "new": failed})
    assert result.config_update == ConfigUpdate.UPDATE_FAILED and not result.promote
    assert result.delete == ["new"] and result.ready == Ready.READY
    assert "no such checkpoint" in result.deployments.state("new").deployment_state_message


def test_update_that_is_not_ready_in_time_fails_with_a_message() -> None:
    endpoint = snapshot(
        pending_config=config(entity("a")),
        config_update=ConfigUpdate.IN_PROGRESS,
        update_started_ms=NOW,
    )
    deploying = AppStatus("a", AppPhase.DEPLOYING, "", 0, 1)
    assert plan(endpoint, {"a": deploying}, now=NOW + TIMEOUT - 1).config_update is None
    result = plan(endpoint, {"a": deploying}, now=NOW + TIMEOUT + 1)
    assert result.config_update == ConfigUpdate.UPDATE_FAILED and result.ready == Ready.NOT_READY
    assert "not ready after 60 s" in result.deployments.state("a").deployment_state_message


def test_update_never_deployed_in_time_fails_with_the_reason_it_waited() -> None:
    waiting = "waiting for 2 CPUs: 0.5 of 8 free"  # what the reconciler stored last tick
    endpoint = snapshot(
        pending_config=config(entity("a")),
        config_update=ConfigUpdate.IN_PROGRESS,
        deployments=Deployments(
            states={
                "a": ServedEntityState(
                    deployment=Deployment.CREATING, deployment_state_message=waiting
                )
            }
        ),
    )
    result = plan(endpoint, {}, now=NOW + TIMEOUT + 1)
    assert result.config_update == ConfigUpdate.UPDATE_FAILED and not result.deploy
    message = result.deployments.state("a").deployment_state_message
    assert message == f"not ready after 60 s (last state: {waiting})"


def test_live_app_that_vanished_is_redeployed_and_endpoint_not_ready_meanwhile() -> None:
    result = plan(snapshot(config=config(entity("a"))), {})
    assert [e.app_name for e in result.deploy] == ["a"]
    assert result.ready == Ready.NOT_READY
    assert result.deployments.state("a").deployment == Deployment.RECOVERING


def test_steady_state_changes_nothing() -> None:
    result = plan(snapshot(config=config(entity("a"))), {"a": running("a")})
    assert not result.deploy and not result.delete and not result.promote
    assert result.ready == Ready.READY and result.config_update is None


def test_unknown_app_of_the_endpoint_is_deleted() -> None:
    apps = {"a": running("a"), "stray": running("stray")}
    assert plan(snapshot(config=config(entity("a"))), apps).delete == ["stray"]


def test_unchanged_entity_is_reused_by_an_update_not_redeployed() -> None:
    endpoint = snapshot(
        config=config(entity("same", "x")),
        pending_config=config(entity("same", "x"), entity("b", "y"), version=2),
        config_update=ConfigUpdate.IN_PROGRESS,
    )
    result = plan(endpoint, {"same": running("same")})
    assert [e.app_name for e in result.deploy] == ["b"]
    result = plan(endpoint, {"same": running("same"), "b": running("b")})
    assert result.promote and not result.delete and "same" not in result.deployments.retiring
