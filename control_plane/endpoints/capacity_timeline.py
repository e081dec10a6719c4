"""The capacity timeline: append-only intervals of what each served entity holds.

`record_capacity` is called when a config goes live: for every served entity whose
capacity differs from its open interval, the open one is closed and a new one opened.
`close_intervals` ends them all (endpoint deleted); `record_parking` follows scale-to-zero
entities parking and waking. Billing integrates these intervals.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from billing.capacity import CapacityInterval
from control_plane.db.models import Endpoint
from control_plane.endpoints.config import ServedEntity
from deploy.providers.base import AppPhase, AppStatus
from deploy.workload_types import workload_type

_CAPACITY_FIELDS = (
    "entity_name",
    "entity_version",
    "model_family",
    "workload_type",
    "workload_size",
    "min_replicas",
    "max_replicas",
    "gpus_per_replica",
    "provisioned_chunks",
    "scale_to_zero_enabled",
)


def _capacity(entity: ServedEntity) -> dict[str, Any]:
    """The interval columns `entity` determines (`_CAPACITY_FIELDS`)."""
    shape = workload_type(entity.workload_type)
    return {
        "entity_name": entity.entity_name,
        "entity_version": entity.entity_version,
        "model_family": entity.model_family,
        "workload_type": entity.workload_type,
        "workload_size": entity.workload_size,
        "min_replicas": entity.min_replicas,
        "max_replicas": entity.max_replicas,
        "gpus_per_replica": shape.devices_per_replica if shape.device == "cuda" else 0,
        "provisioned_chunks": entity.provisioned_chunks,
        "scale_to_zero_enabled": entity.scale_to_zero_enabled,
    }


def open_intervals(session: Session, endpoint_id: str) -> list[CapacityInterval]:
    return list(
        session.scalars(
            select(CapacityInterval).where(
                CapacityInterval.endpoint_id == endpoint_id, CapacityInterval.ended_at.is_(None)
            )
        ).all()
    )


def record_capacity(session: Session, endpoint: Endpoint, now: datetime) -> None:
    assert endpoint.config is not None
    wanted = {e.name: _capacity(e) for e in endpoint.config.served_entities}
    for interval in open_intervals(session, endpoint.id):
        if wanted.get(interval.served_entity_name) == _held(interval):
            del wanted[interval.served_entity_name]  # unchanged: the interval stays open
        else:
            interval.ended_at = now
    for served_name, capacity in wanted.items():
        _open(session, endpoint, served_name, capacity, now)


def _held(interval: CapacityInterval) -> dict[str, Any]:
    return {field: getattr(interval, field) for field in _CAPACITY_FIELDS}


def _open(
    session: Session,
    endpoint: Endpoint,
    served_name: str,
    capacity: dict[str, Any],
    now: datetime,
    *,
    parked: bool = False,
    woke_from_zero: bool = False,
) -> None:
    """Open a new interval of `capacity` for the served entity, starting `now`."""
    session.add(
        CapacityInterval(
            endpoint_id=endpoint.id,
            account_id=endpoint.account_id,
            workspace_id=endpoint.workspace_id,
            endpoint_name=endpoint.name,
            served_entity_name=served_name,
            started_at=now,
            ended_at=None,
            parked=parked,
            woke_from_zero=woke_from_zero,
            **capacity,
        )
    )


def close_intervals(session: Session, endpoint_id: str, now: datetime) -> None:
    session.execute(
        update(CapacityInterval)
        .where(CapacityInterval.endpoint_id == endpoint_id, CapacityInterval.ended_at.is_(None))
        .values(ended_at=now)
    )


def record_parking(
    session: Session, endpoint: Endpoint, apps: dict[str, AppStatus], now: datetime
) -> None:
    """Scale-to-zero entities: when a running app is seen with no replicas, its open interval
    closes and a `parked` one opens (billed nothing); when a parked one has replicas again,
    an interval flagged `woke_from_zero` opens (billed one LAUNCH record). Apps deploying,
    failing or not listed change nothing."""
    if endpoint.config is None:
        return
    scalable = {
        e.name: e.app_name for e in endpoint.config.served_entities if e.scale_to_zero_enabled
    }
    for interval in open_intervals(session, endpoint.id) if scalable else []:
        app = scalable.get(interval.served_entity_name)
        status = apps.get(app) if app else None
        if status is None or status.phase != AppPhase.RUNNING:
            continue
        parked = status.running_replicas == 0
        if parked == interval.parked:
            continue
        interval.ended_at = now
        served_name, held = interval.served_entity_name, _held(interval)
        _open(session, endpoint, served_name, held, now, parked=parked, woke_from_zero=not parked)
