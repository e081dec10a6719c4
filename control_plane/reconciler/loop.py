"""The reconcile loop: every tick, list the provider's apps, claim endpoint leases, apply
each endpoint's plan, and delete apps whose endpoint no longer exists.

Safe with several control planes on one database: an endpoint is reconciled only by the
holder of its lease (an atomic conditional UPDATE; an expired lease is taken over), and
every step is idempotent, so a process killed mid-tick leaves nothing the next tick
cannot finish. Apps are listed *before* the database is read, so an app created by
another process after that read cannot be mistaken for an orphan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from control_plane.db.models import Endpoint
from control_plane.endpoints.capacity import APP_PREFIX, endpoint_id_of_app, worker_config
from control_plane.endpoints.capacity_timeline import record_capacity, record_parking
from control_plane.endpoints.environment import EnvironmentPolicy, SecretNotFound
from control_plane.ids import to_millis, utcnow
from control_plane.reconciler.plan import EndpointSnapshot, Plan, plan_endpoint
from control_plane.settings import Settings
from deploy.providers.base import AppSpec, AppStatus, Provider

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
        self.apps: dict[str, AppStatus] = {}  # every moeserve app, as the last tick saw it

    def kick(self) -> None:
        """Run the next tick now (after an API change); callable from any thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        while True:
            try:
                await asyncio.to_thread(self.tick)
            except Exception:  # a broken tick must not end the loop; the next one retries
                log.exception("reconcile tick failed")
            self._wake.clear()
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
            except StaleDataError:  # deleted while we worked; the orphan sweep finishes it
                log.debug("endpoint %s vanished mid-reconcile", endpoint_id)
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
        with self.sessions() as session:
            endpoint = session.get(Endpoint, endpoint_id, with_for_update=True)
            if endpoint is None or endpoint.lease_owner != self.owner:
                return
            now = utcnow()
            plan = plan_endpoint(
                _snapshot(endpoint),
                apps,
                now_ms=to_millis(now) or 0,
                deployment_timeout_ms=int(self.settings.deployment_timeout_s * 1000),
                retire_grace_ms=self.retire_grace_ms,
            )
            self._act(plan, endpoint.workspace_id)
            _apply(session, endpoint, plan)
            record_parking(session, endpoint, apps, now)
            session.commit()

    def _act(self, plan: Plan, workspace_id: str | None) -> None:
        environment = EnvironmentPolicy(self.settings.environment)
        for entity in plan.deploy:
            try:
                variables = environment.resolved(entity.environment_vars, workspace_id)
            except SecretNotFound:
                # Not deployed; the update fails at its deployment timeout unless the secret
                # comes back. The app name is ours; the reference is not logged.
                log.warning("not deploying %s: a secret it references is gone", entity.app_name)
                continue
            log.info("deploying %s (%s)", entity.app_name, entity.entity_name)
            config = worker_config(entity, self.settings.workers, variables)
            self.provider.deploy(AppSpec(entity.app_name, config))
        for app in plan.delete:
            log.info("deleting app %s", app)
            self.provider.delete(app)


def _snapshot(endpoint: Endpoint) -> EndpointSnapshot:
    return EndpointSnapshot(
        id=endpoint.id,
        config=endpoint.config,
        pending_config=endpoint.pending_config,
        config_update=endpoint.config_update,
        deployments=endpoint.deployments,
        update_started_ms=to_millis(endpoint.update_started_at),
    )


def _apply(session: Session, endpoint: Endpoint, plan: Plan) -> None:
    changed: dict[str, Any] = {}
    if plan.promote:
        assert endpoint.pending_config is not None
        endpoint.config = endpoint.pending_config
        endpoint.config_version = endpoint.pending_config.config_version
        endpoint.pending_config = None
        endpoint.update_started_at = None
        record_capacity(session, endpoint, utcnow())
        changed["promoted"] = endpoint.config_version
    if plan.config_update is not None and plan.config_update != endpoint.config_update:
        endpoint.config_update = plan.config_update
        changed["config_update"] = plan.config_update
    if plan.ready is not None and plan.ready != endpoint.ready:
        endpoint.ready = plan.ready
        changed["ready"] = plan.ready
    if plan.deployments != endpoint.deployments:
        endpoint.deployments = plan.deployments
    if changed:
        endpoint.updated_at = utcnow()
        log.info("endpoint %s: %s", endpoint.name, changed)
