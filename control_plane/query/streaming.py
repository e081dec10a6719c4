"""A streamed answer on the wire: server-sent events of OpenAI chunks, the usage chunk,
`data: [DONE]`, and an error event when the stream fails after its first byte.

`respond` waits for the query's first chunk before any header goes out, so a query that
fails before it (no replica, a prompt too long) gets a plain HTTP error; `ClosingStream`
closes the event generator however the response ends — even when the client left before
the first byte — so the query's accounting always finishes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator

from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from control_plane.errors import ApiError
from control_plane.query import responses
from control_plane.query.accounting import Accounting
from control_plane.query.requests import ChatRequest, GenerationBody
from workers.engine.request import TokenChunk

log = logging.getLogger(__name__)
_CLOSING: set[asyncio.Future[None]] = set()  # strong references until each close is done
DONE = "data: [DONE]\n\n"


async def respond(
    stream: AsyncGenerator[str, None], body: GenerationBody, accounting: Accounting
) -> StreamingResponse:
    """The SSE response of `stream`, once its first chunk came (its first item)."""
    await anext(stream)  # raises what failed before the first chunk
    return ClosingStream(stream, headers={"served-model-name": accounting.entity.name})


class ClosingStream(StreamingResponse):
    def __init__(self, stream: AsyncGenerator[str, None], headers: dict[str, str]) -> None:
        super().__init__(stream, media_type="text/event-stream", headers=headers)
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # In a task of its own: it runs to the end even when this one is being
            # cancelled (the client left). A finished stream closes at once.
            task = asyncio.ensure_future(self._stream.aclose())
            _CLOSING.add(task)
            task.add_done_callback(_closed)


def _closed(task: asyncio.Future[None]) -> None:
    _CLOSING.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("closing a stream failed", exc_info=task.exception())


def _event(payload: BaseModel) -> str:
    return f"data: {payload.model_dump_json()}\n\n"


async def events(
    body: GenerationBody,
    accounting: Accounting,
    first: TokenChunk,
    rest: AsyncIterator[TokenChunk],
    text_of: responses.TextOf,
) -> AsyncIterator[str]:
    """One event per chunk; a chunk's usage counts once it was sent."""
    chat = isinstance(body, ChatRequest)
    request_id, model = accounting.request_id, accounting.entity.name
    started: set[int] = set()
    chunk: TokenChunk | None = first
    while chunk is not None:
        if chat:
            opening = chunk.index not in started
            yield _event(responses.chat_chunk(request_id, model, chunk, text_of, first=opening))
        else:
            yield _event(responses.completion_chunk(request_id, model, chunk, text_of))
        started.add(chunk.index)
        accounting.delivered(chunk.usage, chunk.text)  # it was sent: now it counts
        chunk = await anext(rest, None)


def closing(body: GenerationBody, accounting: Accounting) -> str:
    """The last events: the usage chunk (when asked for), then `[DONE]`."""
    if not body.include_usage:
        return DONE
    chat = isinstance(body, ChatRequest)
    usage = responses.usage_chunk(
        chat, accounting.request_id, accounting.entity.name, accounting.usage
    )
    return _event(usage) + DONE


def error_event(exc: Exception) -> str:
    """The event that ends a stream failing after its first byte."""
    client_error = isinstance(exc, ApiError) and exc.status_code == 400
    return _event(responses.error_chunk(str(exc), client_error=client_error))
