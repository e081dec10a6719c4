"""Small HTTP servers for tests (fake cloud APIs, proxies, webhook receivers): served on a
free 127.0.0.1 port from a daemon thread for the length of a `with` block."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer


def url_of(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


@contextmanager
def serving(server: ThreadingHTTPServer, name: str) -> Iterator[str]:
    """Serve `server` (bound already, e.g. to ("127.0.0.1", 0)) until the block ends; yields
    its base URL. Request threads are daemons, so a handler stuck on a dead client never
    holds the test run."""
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        yield url_of(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
