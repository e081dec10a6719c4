"""Endpoint operations behind the management API, one unit of work each.

Each method validates fully before it writes, writes through the request's session and
leaves the commit to the route (one commit per request). Deployment is the reconciler's
job: these methods only store the desired state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control_plane.auth import Caller, Level, level_of, require
from control_plane.db.models import Endpoint, EndpointPermission
from control_plane.endpoints.capacity import ChunkSize
from control_plane.endpoints.capacity_timeline import close_intervals
from control_plane.endpoints.schemas import (
    AiGatewayInput,
    CreateEndpoint,
    EndpointCoreConfigInput,
    PatchTags,
    RateLimit,
)
from control_plane.endpoints.validation import (
    CapacityCheck,
    check_endpoint_name,
    normalize_config,
)
from control_plane.errors import AlreadyExists, Conflict, NotFound
from control_plane.ids import new_id, to_millis, utcnow
from control_plane.registry import resolve
from control_plane.settings import WorkerDefaults

DEFAULT_TASK = "llm/v1/chat"


@dataclass
class EndpointService:
    session: Session
    caller: Caller
    defaults: WorkerDefaults
    check_capacity: CapacityCheck
    chunk_size: ChunkSize

    # -- lookups -------------------------------------------------------------------------
    def visible_query(self) -> Any:
        return select(Endpoint).where(
            Endpoint.account_id == self.caller.account_id,
            or_(Endpoint.workspace_id == self.caller.workspace_id, Endpoint.workspace_id.is_(None)),
        )

    def by_name(self, name: str, needed: Level = Level.CAN_VIEW) -> tuple[Endpoint, Level]:
        endpoint = self.session.scalars(self.visible_query().where(Endpoint.name == name)).first()
        if endpoint is None:
            raise NotFound(f"endpoint {name!r} does not exist")
        return endpoint, require(self.session, endpoint, self.caller, needed)

    def by_id(self, endpoint_id: str, needed: Level = Level.CAN_VIEW) -> tuple[Endpoint, Level]:
        endpoint = self.session.scalars(
            self.visible_query().where(Endpoint.id == endpoint_id)
        ).first()
        if endpoint is None:
            raise NotFound(f"endpoint id {endpoint_id!r} does not exist")
        return endpoint, require(self.session, endpoint, self.caller, needed)

    def listed(self) -> list[Endpoint]:
        endpoints = self.session.scalars(self.visible_query().order_by(Endpoint.name)).all()
        return [e for e in endpoints if level_of(self.session, e, self.caller) >= Level.CAN_VIEW]

    # -- mutations ------------------------------------------------------------------------
    def create(self, body: CreateEndpoint) -> Endpoint:
        check_endpoint_name(body.name)
        exists = self.session.scalars(
            self.visible_query().where(Endpoint.name == body.name)
        ).first()
        if exists is not None:
            raise AlreadyExists(f"endpoint {body.name!r} already exists in this workspace")
        endpoint_id = new_id()
        now = utcnow()
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
            route_optimized=body.route_optimized,
            ai_gateway=_gateway(body.ai_gateway),
            rate_limits=_limits(body.rate_limits),
            tags=[t.model_dump(exclude_none=True) for t in body.tags or []],
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
        return endpoint

    def update_config(self, name: str, body: EndpointCoreConfigInput) -> Endpoint:
        endpoint, _ = self.by_name(name, Level.CAN_MANAGE)
        if endpoint.config_update == "IN_PROGRESS":
            rolling = (endpoint.pending_config or {}).get("config_version")
            raise Conflict(
                f"endpoint {name!r} has a config update in progress (version {rolling}); "
                "wait until state.config_update is NOT_UPDATING"
            )
        version = endpoint.config_version + 1
        if endpoint.pending_config is not None:  # a failed update left it; it is replaced
            version = max(version, endpoint.pending_config["config_version"] + 1)
        endpoint.pending_config = self._normalize(
            body, endpoint.id, version=version, workspace=endpoint.workspace_id is not None
        )
        endpoint.config_update = "IN_PROGRESS"
        endpoint.update_started_at = endpoint.updated_at = utcnow()
        return endpoint

    def delete(self, name: str) -> None:
        endpoint, _ = self.by_name(name, Level.CAN_MANAGE)
        close_intervals(self.session, endpoint.id, utcnow())
        self.session.delete(endpoint)  # the reconciler removes its Serve apps

    def patch_tags(self, name: str, body: PatchTags) -> list[dict[str, Any]]:
        endpoint, _ = self.by_name(name, Level.CAN_MANAGE)
        removed = set(body.delete_tags) | {t.key for t in body.add_tags}
        tags = [t for t in endpoint.tags if t["key"] not in removed]
        tags += [t.model_dump(exclude_none=True) for t in body.add_tags]
        endpoint.tags = tags
        endpoint.updated_at = utcnow()
        return tags

    def put_ai_gateway(self, name: str, body: AiGatewayInput) -> dict[str, Any]:
        endpoint, _ = self.by_name(name, Level.CAN_MANAGE)
        endpoint.ai_gateway = _gateway(body) or {}
        endpoint.updated_at = utcnow()
        return endpoint.ai_gateway

    def put_rate_limits(self, name: str, limits: list[RateLimit]) -> list[dict[str, Any]]:
        endpoint, _ = self.by_name(name, Level.CAN_MANAGE)
        endpoint.rate_limits = _limits(limits) or []
        endpoint.updated_at = utcnow()
        return endpoint.rate_limits

    def _normalize(
        self,
        config: EndpointCoreConfigInput | None,
        endpoint_id: str,
        *,
        version: int,
        workspace: bool,
    ) -> dict[str, Any]:
        workspace_id = self.caller.workspace_id if workspace else None
        return normalize_config(
            config,
            endpoint_id=endpoint_id,
            version=version,
            creator=self.caller.name,
            now_ms=to_millis(utcnow()) or 0,
            resolve_model=lambda name, version: resolve(self.session, workspace_id, name, version),
            check_capacity=self.check_capacity,
            chunk_size=self.chunk_size,
            defaults=self.defaults,
        )


def new_endpoint(
    *,
    endpoint_id: str,
    account_id: str,
    workspace_id: str | None,
    name: str,
    creator: str,
    pending_config: dict[str, Any],
    now: datetime,
    description: str = "",
    route_optimized: bool = False,
    ai_gateway: dict[str, Any] | None = None,
    rate_limits: list[dict[str, Any]] | None = None,
    tags: list[dict[str, Any]] | None = None,
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
        task=DEFAULT_TASK,
        route_optimized=route_optimized,
        created_at=now,
        updated_at=now,
        config_version=0,
        config=None,
        pending_config=pending_config,
        update_started_at=now,
        ready="NOT_READY",
        config_update="IN_PROGRESS",
        deployments={},
        ai_gateway=ai_gateway,
        rate_limits=rate_limits,
        tags=tags or [],
    )


def _gateway(body: AiGatewayInput | None) -> dict[str, Any] | None:
    return None if body is None else body.model_dump(exclude_none=True)


def _limits(limits: list[RateLimit] | None) -> list[dict[str, Any]] | None:
    return None if limits is None else [r.model_dump(exclude_none=True) for r in limits]
