"""Server-sent events for a streamed answer: OpenAI chunks, the usage chunk, `[DONE]`,
and an error chunk when the stream fails after its first byte."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from control_plane.endpoints.config import ServedEntity as Entity
from control_plane.errors import ApiError
from control_plane.gateway.accounting import CLIENT_CLOSED, Accepted
from control_plane.gateway.protocol import ChatBody, CompletionBody
from control_plane.gateway.runtime import Gateway
from control_plane.gateway.shapes import Choice, GenKind, error_chunk, stream_chunk, usage_chunk
from workers.engine.request import TokenChunk

log = logging.getLogger(__name__)
_CLOSING: set[asyncio.Future[None]] = set()  # strong references until each close is done


class AccountedStream(StreamingResponse):
    """SSE whose bookkeeping runs however the response ends — even when the client left
    before the first byte and the event generator never started."""

    def __init__(self, events: AsyncIterator[str], on_close: Any, headers: dict[str, str]):
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Its own task: it runs to the end even when this one is being cancelled (the
            # client left); a completed stream already recorded its usage before [DONE].
            task = asyncio.ensure_future(self._on_close())
            _CLOSING.add(task)
            task.add_done_callback(_closed)


def _closed(task: asyncio.Future[None]) -> None:
    _CLOSING.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("closing a stream failed", exc_info=task.exception())


def event(payload: Any) -> str:
    return f"data: {json.dumps(payload)}\n\n"


async def sse_events(
    gateway: Gateway,
    accepted: Accepted,
    body: ChatBody | CompletionBody,
    entity: Entity,
    first: TokenChunk,
    rest: AsyncIterator[TokenChunk],
) -> AsyncIterator[str]:
    kind: GenKind = "chat" if isinstance(body, ChatBody) else "completion"
    text_of = gateway.token_text(entity)
    served = entity.name
    started: set[int] = set()
    chunk: TokenChunk | None = first
    try:
        while chunk is not None:
            choice = Choice(chunk.index, chunk.text, chunk.finish_reason, chunk.logprobs)
            first_of_choice = chunk.index not in started
            yield event(
                stream_chunk(
                    kind, accepted.request_id, served, choice, text_of, first=first_of_choice
                )
            )
            started.add(chunk.index)
            accepted.on_chunk(chunk.usage, chunk.text)  # it was sent: now it counts
            chunk = await anext(rest, None)
    except (asyncio.CancelledError, GeneratorExit):
        accepted.finish(CLIENT_CLOSED)  # scheduled: runs although this task is cancelled
        raise
    except Exception as exc:
        bad_request = isinstance(exc, ApiError) and exc.status_code == 400
        await accepted.finish(400 if bad_request else 500)  # durable before the final byte
        yield event(error_chunk(str(exc), "BAD_REQUEST" if bad_request else "INTERNAL_ERROR"))
        return
    await accepted.finish(200)  # durable before the final byte
    if body.include_usage:
        yield event(usage_chunk(kind, accepted.request_id, served, accepted.usage))
    yield "data: [DONE]\n\n"
