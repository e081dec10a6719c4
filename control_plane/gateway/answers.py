"""Answering an accepted query: a whole response, embeddings or a stream, from the first
candidate entity or (before any token) its fallback.

Every path ends the query's bookkeeping (`Accepted.finish`) before the response's last
byte: whole responses before they are returned, streams before `data: [DONE]`.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse

from control_plane.endpoints.config import ServedEntity as Entity
from control_plane.errors import ApiError, TemporarilyUnavailable
from control_plane.gateway.accounting import CLIENT_CLOSED, Accepted
from control_plane.gateway.dispatch import ReplicaFailed, Slot
from control_plane.gateway.prompts import PromptIds
from control_plane.gateway.protocol import Body, ChatBody, CompletionBody, EmbeddingsBody
from control_plane.gateway.runtime import Gateway
from control_plane.gateway.shapes import Choice, GenKind, embeddings_response, full_response
from control_plane.gateway.sse import AccountedStream, sse_events
from workers.engine.request import Usage


class EntitiesUnavailable(TemporarilyUnavailable):
    """No candidate entity answered (each failed before its first token, or was full)."""


def served_by(entity: Entity) -> dict[str, str]:
    return {"served-model-name": entity.name}


async def answer(
    gateway: Gateway,
    accepted: Accepted,
    body: Body,
    entities: list[Entity],
    prompts: PromptIds,
) -> Any:
    if isinstance(body, EmbeddingsBody):
        return await _embed(gateway, accepted, body, entities, prompts)
    if body.stream:
        return await _stream(gateway, accepted, body, entities, prompts)
    return await _complete(gateway, accepted, body, entities, prompts)


async def attempts(
    gateway: Gateway, accepted: Accepted, entities: list[Entity], call: Any
) -> tuple[Entity, Any, Slot]:
    """Run `call(entity)` on the first candidate, then (before any token) the fallback.

    Returns the answering entity, its result and the in-flight slot it holds (the caller
    releases it once the response is complete)."""
    last: Exception | None = None
    for attempt, entity in enumerate(entities):
        accepted.entity = entity.name
        try:
            slot = gateway.dispatcher.acquire(accepted.target.endpoint_name, entity)
        except TemporarilyUnavailable as exc:
            last = exc
        else:
            try:
                return entity, await call(entity), slot
            except (ReplicaFailed, TemporarilyUnavailable) as exc:
                last = exc
                slot.release()
            except BaseException:
                slot.release()
                raise
        if attempt + 1 < len(entities):
            gateway.metrics.fallbacks.labels(accepted.target.endpoint_name, entity.name).inc()
    retry_after = getattr(last, "retry_after_s", None) or gateway.settings.gateway.retry_after_s
    if isinstance(last, ApiError) and last.headers:
        retry_after = int(last.headers.get("Retry-After", retry_after))
    raise EntitiesUnavailable(str(last), headers={"Retry-After": str(retry_after)})


async def _complete(
    gateway: Gateway,
    accepted: Accepted,
    body: ChatBody | CompletionBody,
    entities: list[Entity],
    prompts: PromptIds,
) -> JSONResponse:
    def call(entity: Entity) -> Any:
        request = body.generation_request(accepted.request_id, prompts.of(entity)[0])
        return gateway.dispatcher.complete(accepted.target.endpoint_name, entity, request)

    entity, result, slot = await attempts(gateway, accepted, entities, call)
    slot.release()
    choices = [
        Choice(i, result.texts[i], result.finish_reasons[i], (result.logprobs or {}).get(i))
        for i in sorted(result.texts)
    ]
    accepted.on_chunk(result.usage, "".join(c.text for c in choices))
    kind: GenKind = "chat" if isinstance(body, ChatBody) else "completion"
    payload = full_response(
        kind, accepted.request_id, entity.name, choices, result.usage, gateway.token_text(entity)
    )
    await accepted.finish(200)
    return JSONResponse(payload, headers=served_by(entity))


async def _embed(
    gateway: Gateway,
    accepted: Accepted,
    body: EmbeddingsBody,
    entities: list[Entity],
    prompts: PromptIds,
) -> JSONResponse:
    def call(entity: Entity) -> Any:
        return gateway.dispatcher.embed(accepted.target.endpoint_name, entity, prompts.of(entity))

    entity, result, slot = await attempts(gateway, accepted, entities, call)
    slot.release()
    accepted.on_chunk(result.usage)
    payload = embeddings_response(
        entity.name, result.vectors, result.usage.prompt_tokens, body.encoding_format
    )
    await accepted.finish(200)
    return JSONResponse(payload, headers=served_by(entity))


async def _stream(
    gateway: Gateway,
    accepted: Accepted,
    body: ChatBody | CompletionBody,
    entities: list[Entity],
    prompts: PromptIds,
) -> StreamingResponse:
    """Errors before the first chunk are plain HTTP errors (after fallback); then SSE."""

    def call(entity: Entity) -> Any:
        request = body.generation_request(accepted.request_id, prompts.of(entity)[0])
        return gateway.dispatcher.open_stream(accepted.target.endpoint_name, entity, request)

    entity, (first, rest), slot = await attempts(gateway, accepted, entities, call)
    # The prompt was processed even if the client leaves before the first chunk is sent.
    accepted.usage = Usage(first.usage.prompt_tokens, 0)

    async def on_close() -> None:
        finished = accepted.finish(CLIENT_CLOSED)  # first; a no-op if the stream completed
        slot.release()
        try:
            await rest.aclose()  # cancels the replica's stream if it is still running
        finally:
            await finished

    events = sse_events(gateway, accepted, body, entity, first, rest)
    return AccountedStream(events, on_close, headers=served_by(entity))
