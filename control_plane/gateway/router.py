"""Query routes: `/serving-endpoints/{name}/invocations` (chat, completions, embeddings),
the OpenAI-style `/serving-endpoints/{chat/completions,completions,embeddings}` (endpoint
in the body's `model`) and `GET /serving-endpoints/models`.

One query: parse -> resolve (token, endpoint, CAN_QUERY; cached briefly) -> candidates
(traffic split, fallback) -> tokenize -> rate limits (429 before acceptance) -> accepted:
dispatch, answer, and exactly one usage row whatever happens (`accounting.Accepted`).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from fastapi import APIRouter, Request

from control_plane.api.deps import CallerDep, EndpointsDep
from control_plane.auth import Level, level_of
from control_plane.errors import ApiError, InvalidParameter, TemporarilyUnavailable
from control_plane.gateway.accounting import CLIENT_CLOSED, Accepted
from control_plane.gateway.answers import EntitiesUnavailable, answer
from control_plane.gateway.prompts import PromptIds
from control_plane.gateway.protocol import (
    Kind,
    kind_of,
    parse_body,
)
from control_plane.gateway.routing import candidates
from control_plane.gateway.runtime import Gateway
from control_plane.ids import to_millis

router = APIRouter(prefix="/serving-endpoints", tags=["query"])


@router.get("/models")
def list_models(endpoints: EndpointsDep, caller: CallerDep) -> dict[str, Any]:
    """The endpoints this caller may query, as an OpenAI model list."""
    queryable = [
        e for e in endpoints.listed() if level_of(endpoints.session, e, caller) >= Level.CAN_QUERY
    ]
    return {
        "object": "list",
        "data": [
            {
                "id": e.name,
                "object": "model",
                "created": (to_millis(e.created_at) or 0) // 1000,
                "owned_by": e.creator,
            }
            for e in queryable
        ],
    }


@router.post("/chat/completions")
async def chat_completions(request: Request) -> Any:
    return await _query(request, "chat", None)


@router.post("/completions")
async def completions(request: Request) -> Any:
    return await _query(request, "completion", None)


@router.post("/embeddings")
async def embeddings(request: Request) -> Any:
    return await _query(request, "embeddings", None)


@router.post("/{name}/invocations")
async def invocations(name: str, request: Request) -> Any:
    return await _query(request, None, name)


# -- the query ---------------------------------------------------------------------------
async def _json(request: Request) -> dict[str, Any]:
    try:
        raw = json.loads(await request.body())
    except ValueError:
        raise InvalidParameter("the request body must be JSON") from None
    if not isinstance(raw, dict):
        raise InvalidParameter("the request body must be a JSON object")
    return raw


async def _query(request: Request, kind: Kind | None, name: str | None) -> Any:
    # The app state, not a FastAPI dependency: this is the hot path.
    gateway: Gateway | None = request.app.state.plane.gateway
    if gateway is None:
        raise TemporarilyUnavailable("the query gateway is starting", headers={"Retry-After": "1"})
    raw = await _json(request)
    body = parse_body(kind or kind_of(raw), raw)
    name = name or body.model
    if not name:
        raise InvalidParameter("name the endpoint in the body's `model` field")
    target = await gateway.targets.resolve(request.headers.get("authorization"), name)
    entities = candidates(target.config, target.endpoint_name, fallback=target.fallback_enabled)
    prompts = PromptIds(gateway, body)
    first = prompts.of(entities[0])
    request_id = uuid.uuid4().hex
    reservation = await gateway.reserve(target, request_id, sum(len(p) for p in first))
    accepted = Accepted(
        request_id=request_id,
        target=target,
        streaming=body.stream,
        client_request_id=body.client_request_id,
        usage_context=body.usage_context,
        reservation=reservation,
        ledger=gateway.ledger,
        limiter=gateway.limiter,
        metrics=gateway.metrics,
        entity=entities[0].name,
        request_time=gateway.admitted_at(reservation),
        request_payload=json.dumps(raw) if target.inference_table_enabled else None,
    )
    try:
        try:
            return await answer(gateway, accepted, body, entities, prompts)
        except EntitiesUnavailable:
            # A cached route may name apps a config update has since retired: re-read the
            # endpoint and, if its config moved on, try the new entities (same request id).
            fresh = await gateway.targets.reload(request.headers.get("authorization"), name)
            if fresh.config_version == target.config_version:
                raise
            entities = candidates(fresh.config, name, fallback=fresh.fallback_enabled)
            return await answer(gateway, accepted, body, entities, prompts)
    except ApiError as exc:
        await accepted.finish(exc.status_code)
        raise
    except asyncio.CancelledError:
        accepted.finish(CLIENT_CLOSED)
        raise
    except Exception:
        await accepted.finish(500)
        raise
