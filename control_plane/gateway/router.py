"""Query routes: `/serving-endpoints/{name}/invocations` and the OpenAI-style
`/serving-endpoints/{chat/completions,completions}` (endpoint in the body's `model`).

The request is authenticated and routed (CAN_QUERY, traffic split) synchronously, then
the chosen entity's Serve app streams engine chunks back, as one JSON response or as SSE.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from control_plane.api.deps import EndpointsDep, PlaneDep
from control_plane.auth import Level
from control_plane.errors import InvalidParameter, TemporarilyUnavailable
from control_plane.gateway.protocol import (
    ChatBody,
    CompletionBody,
    full_response,
    generation_request,
    new_request_id,
    stream_chunk,
)
from control_plane.gateway.routing import RETRY_AFTER_S, pick_entity
from control_plane.state import ControlPlane
from deploy.providers.base import AppNotFound
from workers.engine import TokenChunk, Usage
from workers.model import ModelSource
from workers.tokenizer import load_tokenizer

router = APIRouter(prefix="/serving-endpoints", tags=["query"])
Kind = Literal["chat", "completion"]


def _tokenizer(plane: ControlPlane, entity: dict[str, Any]) -> Any:
    name = ModelSource.model_validate(entity["model_source"]).tokenizer_name()
    if name not in plane.tokenizers:
        plane.tokenizers[name] = load_tokenizer(name)
    return plane.tokenizers[name]


def _route(endpoints: EndpointsDep, name: str | None) -> tuple[str, dict[str, Any]]:
    if not name:
        raise InvalidParameter("name the endpoint in the body's `model` field")
    endpoint, _ = endpoints.by_name(name, Level.CAN_QUERY)
    return endpoint.name, pick_entity(endpoint.config, endpoint.name)


async def _answer(plane: ControlPlane, kind: Kind, body: Any, entity: dict[str, Any]) -> Any:
    tokenizer = _tokenizer(plane, entity)
    if kind == "chat":
        messages = [m.model_dump() for m in body.messages]
        prompt_ids = tokenizer.apply_chat_template(messages)
    else:
        prompt_ids = tokenizer.encode(body.prompt)
    request_id = new_request_id()
    request = generation_request(body, prompt_ids, request_id, body.max_tokens)
    try:
        handle = plane.provider.handle(entity["app_name"]).options(stream=True)
    except AppNotFound:  # e.g. redeploying after its replicas were lost
        raise TemporarilyUnavailable(
            f"served entity {entity['name']!r} has no running replicas yet; retry shortly",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        ) from None
    chunks: AsyncIterator[TokenChunk] = handle.generate.remote(request)
    served = entity["name"]
    headers = {"served-model-name": served}
    if body.stream:
        return StreamingResponse(
            _sse(kind, request_id, served, chunks),
            media_type="text/event-stream",
            headers=headers,
        )
    texts: dict[int, str] = {i: "" for i in range(body.n)}
    finish: dict[int, str | None] = {}
    usage: Usage | None = None
    async with asyncio.timeout(plane.settings.query_timeout_s):
        async for chunk in chunks:
            texts[chunk.index] += chunk.text
            usage = chunk.usage
            if chunk.finish_reason:
                finish[chunk.index] = chunk.finish_reason
    return JSONResponse(
        full_response(kind, request_id, served, texts, finish, usage), headers=headers
    )


async def _sse(
    kind: Kind, request_id: str, served: str, chunks: AsyncIterator[TokenChunk]
) -> AsyncIterator[str]:
    first: set[int] = set()
    try:
        async for chunk in chunks:
            payload = stream_chunk(kind, request_id, served, chunk, chunk.index not in first)
            first.add(chunk.index)
            yield f"data: {json.dumps(payload)}\n\n"
    except Exception as exc:  # after the first byte an error travels as a chunk
        error = {"error": {"message": str(exc), "type": "server_error", "code": "INTERNAL_ERROR"}}
        yield f"data: {json.dumps(error)}\n\n"
        return
    yield "data: [DONE]\n\n"


def _parse(kind: Kind, raw: dict[str, Any]) -> ChatBody | CompletionBody:
    model = ChatBody if kind == "chat" else CompletionBody
    try:
        return model.model_validate(raw)
    except ValueError as exc:
        raise InvalidParameter(str(exc).replace("\n", " ")) from None


async def _json(request: Request) -> dict[str, Any]:
    try:
        raw = await request.json()
    except ValueError:
        raise InvalidParameter("the request body must be JSON") from None
    if not isinstance(raw, dict):
        raise InvalidParameter("the request body must be a JSON object")
    return raw


@router.post("/chat/completions")
async def chat_completions(request: Request, endpoints: EndpointsDep, plane: PlaneDep) -> Any:
    body = _parse("chat", await _json(request))
    _, entity = await asyncio.to_thread(_route, endpoints, body.model)
    return await _answer(plane, "chat", body, entity)


@router.post("/completions")
async def completions(request: Request, endpoints: EndpointsDep, plane: PlaneDep) -> Any:
    body = _parse("completion", await _json(request))
    _, entity = await asyncio.to_thread(_route, endpoints, body.model)
    return await _answer(plane, "completion", body, entity)


@router.post("/{name}/invocations")
async def invocations(name: str, request: Request, endpoints: EndpointsDep, plane: PlaneDep) -> Any:
    raw = await _json(request)
    kind: Kind = "chat" if "messages" in raw else "completion"
    if kind == "completion" and "prompt" not in raw:
        raise InvalidParameter("send `messages` (chat) or `prompt` (completion)")
    body = _parse(kind, raw)
    _, entity = await asyncio.to_thread(_route, endpoints, name)
    return await _answer(plane, kind, body, entity)
