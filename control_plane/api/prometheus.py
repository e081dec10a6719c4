"""`GET /metrics`: the Prometheus exposition of this control-plane process (query
counters and latency histograms, tokens, queues, replicas, rate-limit rejections).

It names every endpoint of every workspace, each series labelled `workspace`,
`endpoint_id` and `endpoint` (the name; two workspaces may both have a `chat`), so by
default it needs an account admin's bearer token (`authorization` in the Prometheus scrape
config); set `gateway.metrics_require_auth=false` to open it on a private network. A
workspace sees its own endpoint's samples at `/api/2.0/serving-endpoints/{name}/metrics`.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from control_plane.api.deps import AuthorizationDep, PlaneDep
from control_plane.auth import authenticate
from control_plane.errors import PermissionDenied, TemporarilyUnavailable

router = APIRouter(tags=["observability"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
def metrics(plane: PlaneDep, authorization: AuthorizationDep) -> Response:
    if plane.settings.gateway.metrics_require_auth:
        with plane.sessions() as session:
            caller = authenticate(session, authorization)
        if not caller.is_account_admin:
            raise PermissionDenied("/metrics is for account admins")
    if plane.gateway is None:
        raise TemporarilyUnavailable("starting", headers={"Retry-After": "1"})
    return Response(plane.gateway.metrics.text(), media_type=CONTENT_TYPE_LATEST)
