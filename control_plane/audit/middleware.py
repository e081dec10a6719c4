"""`AuditTrail`: the ASGI middleware that records the audited requests of the management
API (`actions`: what is recorded, and under which name).

It sees every request under `/api/2.0/` once FastAPI has answered it, when the route that
matched, its path parameters, the status and the caller that authentication resolved (the
`get_caller` dependency leaves it on `request.state.caller`) are all known. An audited
request's answer is held back until its event is written, so an action the client sees
acknowledged is on record; the write runs off the event loop, in its own transaction, after
the request's own session has closed (so it never waits on the request's locks). A failed
write is logged and the answer goes out anyway.

The query routes are never held or recorded: `QueryDoor` answers them first, and
anything else outside `/api/2.0/` passes straight through.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control_plane.audit.actions import (
    ACCOUNT_API_PREFIX,
    API_PREFIX,
    CHANGING_METHODS,
    Audited,
    entry_for,
    is_recorded,
)
from control_plane.audit.events import Actor, AuditEvent, result_of
from control_plane.audit.targets import target_of
from control_plane.auth import Caller
from control_plane.ids import new_id, utcnow

log = logging.getLogger(__name__)

# Bodies longer than this are not kept: their target fields stay out of the event.
MAX_KEPT_BODY_BYTES = 64 * 1024
_ERROR_CODE = re.compile("[A-Z_]{1,64}")

Write = Callable[[AuditEvent], object]


class AuditTrail:
    def __init__(self, app: ASGIApp, write: Write) -> None:
        self.app = app
        self.write = write

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(
            (API_PREFIX, ACCOUNT_API_PREFIX)
        ):
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})  # shared with the route's `request.state`
        exchange = _Exchange(scope, receive, send)
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except Exception:
            await self._record(exchange, 500)  # what the server's error handler answers
            raise
        if exchange.held_status is not None:
            await self._record(exchange, exchange.held_status)
            await exchange.release()

    async def _record(self, exchange: _Exchange, status: int) -> None:
        try:
            entry = exchange.entry_at(status)
            if entry is not None:
                await asyncio.to_thread(self.write, exchange.event(entry, status))
        except Exception as exc:  # auditing never fails the request it describes
            log.error("audit event not recorded: %s", type(exc).__name__)


class _Exchange:
    """One request as the trail sees it: the body it kept, and the answer it holds."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self._body: bytearray | None = bytearray() if scope["method"] in CHANGING_METHODS else None
        self._held: list[Message] = []
        self.held_status: int | None = None
        self._passing = False

    async def receive(self) -> Message:
        message = await self._receive()
        if self._body is not None and message["type"] == "http.request":
            self._body += message.get("body", b"")
            if len(self._body) > MAX_KEPT_BODY_BYTES:
                self._body = None
        return message

    async def send(self, message: Message) -> None:
        if self._passing:
            await self._send(message)
            return
        if message["type"] == "http.response.start":
            status = int(message["status"])
            if self.entry_at(status) is None:
                self._passing = True
                await self._send(message)
                return
            self.held_status = status
        self._held.append(message)

    async def release(self) -> None:
        for message in self._held:
            await self._send(message)

    def entry_at(self, status: int) -> Audited | None:
        """The catalogue entry if this request, answered `status`, is recorded."""
        route = self.scope.get("route")
        method = self.scope["method"]
        if not isinstance(route, APIRoute) or method not in (route.methods or ()):
            return None  # no route matched (404, 405): nothing was called
        entry = entry_for(method, route.path, [str(tag) for tag in route.tags], route.name)
        return entry if is_recorded(method, entry, status) else None

    def event(self, entry: Audited, status: int) -> AuditEvent:
        caller = self.scope["state"].get("caller")
        answer = b"".join(
            m.get("body", b"") for m in self._held if m["type"] == "http.response.body"
        )
        body = None if self._body is None else bytes(self._body)
        client = self.scope.get("client")
        who: dict[str, Any] = {"actor": Actor.UNKNOWN}
        if isinstance(caller, Caller):
            who = {
                "actor": Actor(caller.kind),
                "account_id": caller.account_id,
                "workspace_id": caller.workspace_id,
                "user_name": caller.name,
                "principal_id": caller.principal_id,
                "token_id": caller.token_id,
            }
        return AuditEvent(
            event_id=new_id(),
            event_time=utcnow(),
            **who,
            action=entry.action,
            target=target_of(
                entry,
                self.scope.get("path_params", {}),
                body,
                answer if status < 400 else None,
            ),
            source_ip_address=client[0] if client else None,
            status_code=status,
            result=result_of(status),
            error_code=_error_code(answer) if status >= 400 else None,
        )


def _error_code(answer: bytes) -> str | None:
    """The Databricks `error_code` of an error answer, if it has one of the usual shape."""
    try:
        code = json.loads(answer).get("error_code")
    except (ValueError, AttributeError, RecursionError):
        return None
    return code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else None
