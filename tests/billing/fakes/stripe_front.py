"""A fake of Stripe's meter-event routes, in front of localstripe, with injected faults.

localstripe has no billing meters, so `POST /v1/billing/meter_events` and
`POST /v1/billing/meter_event_adjustments` are answered here, the way Stripe answers them: an
event whose `identifier` was already accepted is rejected with 400 `invalid_request_error`
"An event already exists with identifier …" (and not recorded again); an adjustment of type
`cancel` marks the event with that identifier cancelled. Every other request is forwarded
unchanged to `upstream` (localstripe).

Faults are queued with `inject(fault, path_prefix)` and each one applies to the next request
whose path starts with the prefix:
- "500": answer 500 without processing the request (Stripe failed before acting);
- "timeout": process it (record / forward), then hold the response past the client's
  timeout — the case where Stripe acted but the client never heard.
Runs on 127.0.0.1 in a thread of its own; `stop()` ends it.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import web


@dataclass
class MeterEvent:
    identifier: str
    event_name: str
    customer_id: str
    value: str
    timestamp: int
    cancelled: bool = False


@dataclass
class StripeFront:
    upstream: str | None = None
    hang_s: float = 2.0
    events: dict[str, MeterEvent] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    faults: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def inject(self, fault: str, path_prefix: str = "/v1/") -> None:
        with self._lock:
            self.faults.append((fault, path_prefix))

    def reset(self) -> None:
        with self._lock:
            self.events.clear()
            self.requests.clear()
            self.faults.clear()

    def _take_fault(self, path: str) -> str | None:
        with self._lock:
            for index, (fault, prefix) in enumerate(self.faults):
                if path.startswith(prefix):
                    del self.faults[index]
                    return fault
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(f"{request.method} {request.path}")
        fault = self._take_fault(request.path)
        if fault == "500":
            error = {"type": "api_error", "message": "injected 500"}
            return web.json_response({"error": error}, status=500)
        if request.path == "/v1/billing/meter_events":
            response = self._meter_event(_form(body))
        elif request.path == "/v1/billing/meter_event_adjustments":
            response = self._adjustment(_form(body))
        else:
            response = await self._forward(request, body)
        if fault == "timeout":
            await asyncio.sleep(self.hang_s)
        return response

    def _meter_event(self, form: dict[str, str]) -> web.Response:
        identifier = form["identifier"]
        with self._lock:
            if identifier in self.events:
                message = f"An event already exists with identifier {identifier}."
                error = {"type": "invalid_request_error", "message": message}
                return web.json_response({"error": error}, status=400)
            self.events[identifier] = MeterEvent(
                identifier=identifier,
                event_name=form["event_name"],
                customer_id=form["payload[stripe_customer_id]"],
                value=form["payload[value]"],
                timestamp=int(form["timestamp"]),
            )
        body = {"object": "billing.meter_event", "identifier": identifier, "livemode": False}
        return web.json_response(body)

    def _adjustment(self, form: dict[str, str]) -> web.Response:
        identifier = form["cancel[identifier]"]
        with self._lock:
            if identifier in self.events:
                self.events[identifier].cancelled = True
        body = {
            "object": "billing.meter_event_adjustment",
            "id": f"mea_{identifier}",
            "status": "pending",
            "type": "cancel",
            "cancel": {"identifier": identifier},
        }
        return web.json_response(body)

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        assert self.upstream, f"no upstream for {request.path}"
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, self.upstream + request.path_qs, data=body, headers=headers
            ) as upstream,
        ):
            payload = await upstream.read()
            content_type = upstream.headers.get("Content-Type", "application/json")
            return web.Response(
                body=payload, status=upstream.status, headers={"Content-Type": content_type}
            )

    def start(self) -> StripeFront:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            port = self._runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}"
            ready.set()

        def run() -> None:
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def live_events(self) -> dict[str, MeterEvent]:
        return {k: v for k, v in self.events.items() if not v.cancelled}


def _form(body: bytes) -> dict[str, Any]:
    return dict(parse_qsl(body.decode()))
