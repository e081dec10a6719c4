"""The reconcile loop: every tick, list the provider's apps, claim endpoint leases, apply
each endpoint's plan, and delete apps whose endpoint no longer exists.

Safe with several control planes on one database: an endpoint is reconciled only by the
holder of its lease (an atomic conditional UPDATE; an expired lease is taken over), and
every step is idempotent, so a process killed mid-tick leaves nothing the next tick
cannot finish. Apps are listed *before* the database is read, so an app created by
another process after that read cannot be mistaken for an orphan.

No database transaction, let alone a row lock, is open while the provider works (a cloud
call takes minutes; the API must not wait on it). One endpoint's reconcile is three steps:
read its row and plan (a short read), act through the provider (no transaction), then
store the outcome with one conditional UPDATE that matches only while the row's
`generation` is the one planned from and this process still holds the lease. A config
update (or another lease holder's write) in between bumps the generation: the outcome is
discarded and the next tick plans again from the new row. Discarding is safe because the
provider calls were idempotent (app names encode the config: a stale deploy is a no-op or
an app the new plan keeps or retires, a stale delete is redeployed by the new plan).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from control_plane.db.models import Endpoint, Workspace
from control_plane.endpoints.capacity import (
    APP_PREFIX,
    PlacementOf,
    endpoint_id_of_app,
    starting_workload,
    worker_config,
)
from control_plane.endpoints.capacity_timeline import record_capacity, record_parking
from control_plane.endpoints.config import ServedEntity
from control_plane.endpoints.environment import EnvironmentPolicy, SecretNotFound
from control_plane.endpoints.states import Ready
from control_plane.ids import to_millis, utcnow
from control_plane.placement import WorkspacePlacement, stored_placement
from control_plane.reconciler.plan import EndpointSnapshot, Plan, plan_endpoint
from control_plane.settings import Settings
from deploy.providers.base import AppSpec, AppStatus, Provider, UnsupportedCapacity

log = logging.getLogger(__name__)


def default_owner() -> str:
    # Fits endpoints.lease_owner (64 chars) whatever the host name (up to 64, e.g. a pod
    # name): 40 + 1 + pid (at most 7 digits) + 1 + 6. The random suffix keeps it unique.
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Reconciler:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        provider: Provider,
        settings: Settings,
        owner: str | None = None,
    ) -> None:
        self.sessions = sessions
        self.provider = provider
        self.settings = settings
        self.owner = owner or default_owner()
        self.retire_grace_ms = int(settings.retire_grace_s * 1000)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.ticks = 0
        self.discarded = 0  # outcomes not stored: the endpoint changed while we acted
        self.apps: dict[str, AppStatus] = {}  # every moeserve app, as the last tick saw it

    def kick(self) -> None:
        """Run the next tick now (after an API change); callable from any thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()  # before the tick: a kick during it runs the next one at once
            try:
                await asyncio.to_thread(self.tick)
            except Exception:  # a broken tick must not end the loop; the next one retries
                log.exception("reconcile tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.reconcile_interval_s)

    # -- one pass (synchronous: runs in a worker thread) --------------------------------
    def tick(self) -> None:
        apps = self.provider.list_apps(APP_PREFIX)
        self.apps = apps
        with self.sessions() as session:
            endpoint_ids = set(session.scalars(select(Endpoint.id)).all())
            owned = self._claim(session)
        for app in apps:
            endpoint_id = endpoint_id_of_app(app)
            if endpoint_id is not None and endpoint_id not in endpoint_ids:
                log.info("deleting app %s: its endpoint is gone", app)
                self.provider.delete(app)
        for endpoint_id in owned:
            prefix = f"{APP_PREFIX}{endpoint_id}-"
            mine = {name: status for name, status in apps.items() if name.startswith(prefix)}
            try:
                self._reconcile(endpoint_id, mine)
            except Exception:
                log.exception("reconciling endpoint %s failed; retrying next tick", endpoint_id)
        self.ticks += 1

    def _claim(self, session: Session) -> list[str]:
        now = utcnow()
        session.execute(
            update(Endpoint)
            .where(
                or_(
                    Endpoint.lease_owner.is_(None),
                    Endpoint.lease_owner == self.owner,
                    and_(Endpoint.lease_expires_at.is_not(None), Endpoint.lease_expires_at < now),
                )
            )
            .values(
                lease_owner=self.owner,
                lease_expires_at=now + timedelta(seconds=self.settings.lease_ttl_s),
            )
        )
        session.commit()
        return list(session.scalars(select(Endpoint.id).where(Endpoint.lease_owner == self.owner)))

    def _reconcile(self, endpoint_id: str, apps: dict[str, AppStatus]) -> None:
        # 1. read and plan: a short read, nothing locked.
        with self.sessions() as session:
            endpoint = session.get(Endpoint, endpoint_id)
            if endpoint is None or endpoint.lease_owner != self.owner:
                return
            seen = _Seen(_snapshot(endpoint), endpoint.generation, endpoint.ready)
            workspace_id = endpoint.workspace_id
            workspace = None if workspace_id is None else session.get(Workspace, workspace_id)
            where = (
                None
                if workspace is None
                else stored_placement(workspace.cloud, workspace.region, self.settings)
            )
        now = utcnow()
        plan = plan_endpoint(
            seen.snapshot,
            apps,
            now_ms=to_millis(now) or 0,
            deployment_timeout_ms=int(self.settings.deployment_timeout_s * 1000),
            retire_grace_ms=self.retire_grace_ms,
        )
        # 2. act: provider calls, with no transaction open.
        placement_of = _placement_of(where, endpoint_id)
        held = self._act(plan, workspace_id, placement_of)
        for app, why in held.items():  # not deployed this tick: the state says why
            plan.states[app] = plan.states[app].model_copy(update={"deployment_state_message": why})
        # 3. store the outcome, only if the row is still the one planned from.
        if not self._store(endpoint_id, seen, plan, apps, now):
            self.discarded += 1
            log.info("endpoint %s changed while it was reconciled; planning again", endpoint_id)
            self.kick()

    def _act(
        self, plan: Plan, workspace_id: str | None, placement_of: PlacementOf | None = None
    ) -> dict[str, str]:
        """Deploy and delete what `plan` says. Returns the apps not deployed, each with the
        reason: a secret gone, capacity the cluster can never give, or capacity that other
        applications hold now (deployed on a later tick, once free)."""
        environment = EnvironmentPolicy(self.settings.environment)
        held: dict[str, str] = {}
        admitted: list[tuple[ServedEntity, dict[str, str]]] = []
        for entity in plan.deploy:  # decide first, so no deploy of this tick is counted twice
            try:
                variables = environment.resolved(entity.environment_vars, workspace_id)
            except SecretNotFound:
                # Not deployed; the update fails at its deployment timeout unless the secret
                # comes back. The app name is ours; the reference is not logged.
                log.warning("not deploying %s: a secret it references is gone", entity.app_name)
                held[entity.app_name] = "not deployed: a secret its environment_vars name is gone"
                continue
            starting = [e for e, _ in admitted] + [entity]
            waiting = self.provider.shortfall(
                starting_workload(starting, self.settings.workers, placement_of)
            )
            if waiting is not None:
                log.debug("not deploying %s yet: %s", entity.app_name, waiting)
                held[entity.app_name] = waiting
                continue
            admitted.append((entity, variables))
        for entity, variables in admitted:
            log.info("deploying %s (%s)", entity.app_name, entity.entity_name)
            config = worker_config(entity, self.settings.workers, variables)
            try:
                placement = None if placement_of is None else placement_of(entity)
                self.provider.deploy(AppSpec(entity.app_name, config, placement))
            except UnsupportedCapacity as exc:  # the cluster shrank since the config was taken
                held[entity.app_name] = f"not deployed: {exc}"
        for app in plan.delete:
            log.info("deleting app %s", app)
            self.provider.delete(app)
        return held

    def _store(
        self,
        endpoint_id: str,
        seen: _Seen,
        plan: Plan,
        apps: dict[str, AppStatus],
        now: datetime,
    ) -> bool:
        """Write `plan`'s outcome in one conditional UPDATE (which also renews the lease);
        False, writing nothing, when the row's generation or lease moved on since `seen`."""
        values, changed = _changes(seen, plan, now)
        if values:
            values["generation"] = Endpoint.generation + 1
        values["lease_expires_at"] = now + timedelta(seconds=self.settings.lease_ttl_s)
        with self.sessions() as session:
            result = session.execute(
                update(Endpoint)
                .where(
                    Endpoint.id == endpoint_id,
                    Endpoint.generation == seen.generation,
                    Endpoint.lease_owner == self.owner,
                )
                .values(**values)
            )
            assert isinstance(result, CursorResult)
            if result.rowcount != 1:
                session.rollback()
                return False
            endpoint = session.get(Endpoint, endpoint_id)
            assert endpoint is not None  # the UPDATE matched it and holds its row lock
            if plan.promote:
                record_capacity(session, endpoint, now)
            record_parking(session, endpoint, apps, now)
            session.commit()
        if changed:
            log.info("endpoint %s: %s", endpoint_id, changed)
        return True


def _placement_of(where: WorkspacePlacement | None, endpoint_id: str) -> PlacementOf | None:
    if where is None or where.cloud == "local":
        return None
    return lambda entity: where.of(entity, endpoint_id)


@dataclass(frozen=True)
class _Seen:
    """What the read step saw of an endpoint: the planner's input, and what the store step
    compares against (`generation`) or diffs with (`ready`)."""

    snapshot: EndpointSnapshot
    generation: int
    ready: Ready


def _snapshot(endpoint: Endpoint) -> EndpointSnapshot:
    return EndpointSnapshot(
        id=endpoint.id,
        config=endpoint.config,
        pending_config=endpoint.pending_config,
        config_update=endpoint.config_update,
        deployments=endpoint.deployments,
        update_started_ms=to_millis(endpoint.update_started_at),
    )


def _changes(seen: _Seen, plan: Plan, now: datetime) -> tuple[dict[str, Any], dict[str, Any]]:
    """The columns `plan` changes relative to what was read (none: only the lease renews),
    and the state changes among them, for the log."""
    before = seen.snapshot
    values: dict[str, Any] = {}
    changed: dict[str, Any] = {}
    if plan.promote:
        assert before.pending_config is not None
        values.update(
            config=before.pending_config,
            config_version=before.pending_config.config_version,
            pending_config=None,
            update_started_at=None,
        )
        changed["promoted"] = before.pending_config.config_version
    if plan.config_update is not None and plan.config_update != before.config_update:
        values["config_update"] = changed["config_update"] = plan.config_update
    if plan.ready is not None and plan.ready != seen.ready:
        values["ready"] = changed["ready"] = plan.ready
    if plan.deployments != before.deployments:
        values["deployments"] = plan.deployments
    if changed:
        values["updated_at"] = now
    return values, changed
