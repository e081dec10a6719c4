"""Endpoint operations behind the management API, one unit of work each.

Each method validates fully before it writes, writes through the request's session and
leaves the commit to the route (one commit per request). Deployment is the reconciler's
job: these methods only store the desired state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billing.tags import record_tags
from control_plane.auth import Caller, Level
from control_plane.db.models import Endpoint, EndpointPermission
from control_plane.endpoints import lookup
from control_plane.endpoints.ai_gateway import AiGatewayConfig, RateLimit
from control_plane.endpoints.capacity import ChunkSize, PlacementOf
from control_plane.endpoints.capacity_timeline import close_intervals
from control_plane.endpoints.config import EndpointConfig, EndpointTag, Task
from control_plane.endpoints.environment import EnvironmentPolicy
from control_plane.endpoints.schemas import CreateEndpoint, EndpointCoreConfigInput, PatchTags
from control_plane.endpoints.states import ConfigUpdate, Deployments, Ready
from control_plane.endpoints.validation import (
    CapacityCheck,
    check_endpoint_name,
    normalize_config,
)
from control_plane.errors import AlreadyExists, Conflict
from control_plane.ids import new_id, to_millis, utcnow
from control_plane.placement import WorkspacePlacement
from control_plane.registry import SystemModels, resolve
from control_plane.settings import WorkerDefaults


@dataclass
class EndpointService:
    session: Session
    caller: Caller
    defaults: WorkerDefaults
    check_capacity: CapacityCheck
    chunk_size: ChunkSize
    environment: EnvironmentPolicy
    workspace_placement: WorkspacePlacement | None = None  # the caller's workspace's
    system_models: SystemModels = field(default_factory=dict)  # Settings.system_models
    guard_model: bool = False  # the installation has one (safety, valid_topics guardrails)

    # -- lookups (`endpoints.lookup`) -----------------------------------------------------
    def by_name(self, name: str, needed: Level = Level.CAN_VIEW) -> tuple[Endpoint, Level]:
        return lookup.by_name(self.session, self.caller, name, needed)

    def by_id(self, endpoint_id: str, needed: Level = Level.CAN_VIEW) -> tuple[Endpoint, Level]:
        return lookup.by_id(self.session, self.caller, endpoint_id, needed)

    def listed(self) -> list[Endpoint]:
        return lookup.listed(self.session, self.caller)

    # -- mutations ------------------------------------------------------------------------
    def create(self, body: CreateEndpoint) -> Endpoint:
        check_endpoint_name(body.name)
        exists = self.session.scalars(
            lookup.visible_to(self.caller).where(Endpoint.name == body.name)
        ).first()
        if exists is not None:
            raise AlreadyExists(f"endpoint {body.name!r} already exists in this workspace")
        endpoint_id = new_id()
        now = utcnow()
        if body.ai_gateway is not None:
            body.ai_gateway.check_enforceable(guard_model=self.guard_model)
        pending = self._normalize(body.config, endpoint_id, version=1, workspace=True)
        endpoint = new_endpoint(
            endpoint_id=endpoint_id,
            account_id=self.caller.account_id,
            workspace_id=self.caller.workspace_id,
            name=body.name,
            creator=self.caller.name,
            pending_config=pending,
            now=now,
            description=body.description or "",
            task=body.task,
            route_optimized=body.route_optimized,
            ai_gateway=body.ai_gateway,
            rate_limits=body.rate_limits,
            tags=body.tags or [],
        )
        self.session.add(endpoint)
        try:
            self.session.flush()
        except IntegrityError:
            self.session.rollback()
            raise AlreadyExists(
                f"endpoint {body.name!r} already exists in this workspace"
            ) from None
        self.session.add(
            EndpointPermission(
                endpoint_id=endpoint_id, principal_id=self.caller.principal_id, level="CAN_MANAGE"
            )
        )
        if endpoint.tags:
            record_tags(self.session, endpoint_id, _tag_map(endpoint.tags), now)
        return endpoint

    def update_config(self, name: str, body: EndpointCoreConfigInput) -> Endpoint:
        endpoint, _ = self.by_name(name, Level.CAN_MANAGE)
        # Read again under the row lock (PostgreSQL; SQLite serializes writers anyway): a
        # concurrent update then waits for this one and sees IN_PROGRESS. The reconciler
        # never holds this lock across a provider call, so the wait is short.
        self.session.refresh(endpoint, with_for_update=True)
        if endpoint.config_update == ConfigUpdate.IN_PROGRESS:
            pending = endpoint.pending_config
            rolling = pending.config_version if pending is not None else None
            raise Conflict(
                f"endpoint {name!r} has a config update in progress (version {rolling}); "
                "wait until state.config_update is NOT_UPDATING"
            )
        version = endpoint.config_version + 1
        if endpoint.pending_config is not None:  # a failed update left it; it is replaced
            version = max(version, endpoint.pending_config.config_version + 1)
        endpoint.pending_config = self._normalize(
            body,
            endpoint.id,
            version=version,
            workspace=endpoint.workspace_id is not None,
            current=endpoint.config,
        )
        endpoint.config_update = ConfigUpdate.IN_PROGRESS
        endpoint.update_started_at = endpoint.updated_at = utcnow()
        # A reconcile planned before this update must not store its outcome over it: the
        # reconciler writes only while the generation it read is current. Incremented in
        # SQL, so it never repeats a value whatever this session read.
        endpoint.generation = Endpoint.generation + 1
        return endpoint

    def delete(self, name: str) -> None:
        endpoint, _ = self.by_name(name, Level.CAN_MANAGE)
        close_intervals(self.session, endpoint.id, utcnow())
        self.session.delete(endpoint)  # the reconciler removes its Serve apps

    def patch_tags(self, name: str, body: PatchTags) -> list[EndpointTag]:
        endpoint, _ = self.by_name(name, Level.CAN_MANAGE)
        removed = set(body.delete_tags) | {t.key for t in body.add_tags}
        endpoint.tags = [t for t in endpoint.tags if t.key not in removed] + body.add_tags
        endpoint.updated_at = utcnow()
        record_tags(self.session, endpoint.id, _tag_map(endpoint.tags), endpoint.updated_at)
        return endpoint.tags

    def put_ai_gateway(self, name: str, body: AiGatewayConfig) -> AiGatewayConfig:
        body.check_enforceable(guard_model=self.guard_model)
        endpoint, _ = self.by_name(name, Level.CAN_MANAGE)
        endpoint.ai_gateway = body
        endpoint.updated_at = utcnow()
        return body

    def put_rate_limits(self, name: str, limits: list[RateLimit]) -> list[RateLimit]:
        endpoint, _ = self.by_name(name, Level.CAN_MANAGE)
        endpoint.rate_limits = limits
        endpoint.updated_at = utcnow()
        return limits

    def _normalize(
        self,
        config: EndpointCoreConfigInput | None,
        endpoint_id: str,
        *,
        version: int,
        workspace: bool,
        current: EndpointConfig | None = None,
    ) -> EndpointConfig:
        workspace_id = self.caller.workspace_id if workspace else None
        return normalize_config(
            config,
            endpoint_id=endpoint_id,
            version=version,
            creator=self.caller.name,
            now_ms=to_millis(utcnow()) or 0,
            resolve_model=lambda name, version: resolve(
                self.session, workspace_id, name, version, system_models=self.system_models
            ),
            check_capacity=self.check_capacity,
            check_environment=lambda env: self.environment.check(env, self.caller.workspace_id),
            chunk_size=self.chunk_size,
            defaults=self.defaults,
            current=current,
            placement_of=self._placement_of(endpoint_id) if workspace else None,
        )

    def _placement_of(self, endpoint_id: str) -> PlacementOf | None:
        where = self.workspace_placement
        if where is None or where.cloud == "local":
            return None
        return lambda entity: where.of(entity, endpoint_id)


def new_endpoint(
    *,
    endpoint_id: str,
    account_id: str,
    workspace_id: str | None,
    name: str,
    creator: str,
    pending_config: EndpointConfig,
    now: datetime,
    task: Task,
    description: str = "",
    route_optimized: bool = False,
    ai_gateway: AiGatewayConfig | None = None,
    rate_limits: list[RateLimit] | None = None,
    tags: list[EndpointTag] | None = None,
) -> Endpoint:
    """A new endpoint row: nothing live yet, config version 1 pending, update in progress
    (the reconciler takes it from here). The one place an endpoint's initial state is set."""
    return Endpoint(
        id=endpoint_id,
        account_id=account_id,
        workspace_id=workspace_id,
        name=name,
        creator=creator,
        description=description,
        task=task,
        route_optimized=route_optimized,
        created_at=now,
        updated_at=now,
        config_version=0,
        config=None,
        pending_config=pending_config,
        update_started_at=now,
        ready=Ready.NOT_READY,
        config_update=ConfigUpdate.IN_PROGRESS,
        deployments=Deployments(),
        ai_gateway=ai_gateway,
        rate_limits=rate_limits,
        tags=tags or [],
    )


def _tag_map(tags: list[EndpointTag]) -> dict[str, str]:
    """Tags as billing records carry them (`custom_tags`: key -> value)."""
    return {tag.key: tag.value or "" for tag in tags}
