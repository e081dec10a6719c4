"""A local webhook receiver for the budget tests: counts every POST with its body and
headers, answers 500 to the first `fail_first` of them (to see retries) and 204 after."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.http_servers import serving


@dataclass
class Received:
    body: str
    headers: dict[str, str]


@dataclass
class Receiver:
    url: str = ""
    fail_first: int = 0
    received: list[Received] = field(default_factory=list)  # every POST, failed ones too
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accepted(self) -> list[Received]:
        with self.lock:
            return self.received[self.fail_first :]


@contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            with receiver.lock:
                receiver.received.append(Received(body, dict(self.headers.items())))
                failing = len(receiver.received) <= receiver.fail_first
            self.send_response(500 if failing else 204)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with serving(server, "webhook-receiver") as url:
        receiver.url = f"{url}/hook"
        yield receiver
