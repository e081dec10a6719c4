"""A forwarding proxy in front of `moto_server` that can kill the control plane at one exact
AWS call: just before the call reaches AWS (what it would have done is not done) or just
after AWS did it (the control plane never hears the answer). SIGKILL, from the proxy's
thread, while the control plane waits on that very request: the real crash between two
cloud calls, with no test hook in the code under test.
"""

from __future__ import annotations

import os
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import parse_qs

from tests.http_servers import serving

Moment = Literal["before", "after"]


@dataclass
class Trap:
    action: str  # an AWS query-protocol Action, e.g. CreateAutoScalingGroup
    moment: Moment
    pid: int
    sprung: threading.Event


class KillingProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream
        self.trap: Trap | None = None
        self.actions: list[str] = []  # every Action forwarded, in order

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def arm(self, action: str, moment: Moment, pid: int) -> threading.Event:
        sprung = threading.Event()
        self.trap = Trap(action, moment, pid, sprung)
        return sprung


class _Handler(BaseHTTPRequestHandler):
    server: KillingProxy

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        action = parse_qs(body.decode(errors="replace")).get("Action", [""])[0]
        trap = self.server.trap
        sprung = trap is not None and trap.action == action
        if sprung and trap is not None and trap.moment == "before":
            self._kill(trap)
            return  # never forwarded: AWS did not do it
        status, headers, answer = self._forward(body)
        self.server.actions.append(action)
        if sprung and trap is not None:
            self._kill(trap)  # AWS did it; nobody hears back
            return
        self.send_response(status)
        for key, value in headers:
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        request = urllib.request.Request(
            self.server.upstream + self.path,
            data=body,
            method="POST",
            headers={k: v for k, v in self.headers.items() if k.lower() != "host"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, list(response.headers.items()), response.read()
        except urllib.error.HTTPError as error:
            return error.code, list(error.headers.items()), error.read()

    def _kill(self, trap: Trap) -> None:
        self.server.trap = None
        os.kill(trap.pid, signal.SIGKILL)
        trap.sprung.set()
        self.close_connection = True


@contextmanager
def killing_proxy(upstream: str) -> Iterator[KillingProxy]:
    proxy = KillingProxy(upstream)
    with serving(proxy, "aws-proxy"):
        yield proxy
