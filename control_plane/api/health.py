"""`GET /healthz` and `GET /readyz`: the probes an orchestrator (Kubernetes, a load
balancer) sends, without a token.

- `/healthz` (liveness): the process answers HTTP. Restarting a process whose database is
  down would not bring the database back, so it checks nothing else.
- `/readyz` (readiness): this process should get traffic. Its query gateway is started and
  its database answers a `SELECT 1` within `READY_TIMEOUT_S`; otherwise a 503, so the
  load balancer sends queries to a replica that can bill them. While the process starts,
  uvicorn accepts no connection at all; while it drains (SIGTERM), it accepts none either.

Neither answer names a workspace, an endpoint or the database: anyone can send them.
"""

from __future__ import annotations

import asyncio
import logging
from enum import StrEnum

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from control_plane.api.deps import PlaneDep
from control_plane.errors import TemporarilyUnavailable
from control_plane.state import ControlPlane

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)

READY_TIMEOUT_S = 2.0


class Health(StrEnum):
    OK = "ok"
    READY = "ready"


class HealthAnswer(BaseModel):
    status: Health


@router.get("/healthz", response_model=HealthAnswer)
async def healthz() -> HealthAnswer:
    return HealthAnswer(status=Health.OK)


@router.get("/readyz", response_model=HealthAnswer)
async def readyz(plane: PlaneDep) -> HealthAnswer:
    if plane.gateway is None:
        raise _not_ready("the query gateway is starting")
    try:
        await asyncio.wait_for(asyncio.to_thread(_ping, plane), READY_TIMEOUT_S)
    except (TimeoutError, SQLAlchemyError) as exc:
        log.warning("not ready: the database did not answer (%s)", type(exc).__name__)
        raise _not_ready("the database does not answer") from None
    return HealthAnswer(status=Health.READY)


def _ping(plane: ControlPlane) -> None:
    with plane.engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def _not_ready(why: str) -> TemporarilyUnavailable:
    return TemporarilyUnavailable(f"not ready: {why}", headers={"Retry-After": "1"})
