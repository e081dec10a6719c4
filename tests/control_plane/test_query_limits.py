"""Issue 14, findings 7 and 8: what a query costs the server before it is known to be worth
it. A body over `gateway.max_body_bytes` is a 413 (before it is read when Content-Length
says so); an unauthenticated caller is a 401 before its body is read; JSON nested past the
parser's depth is a 400 that logs nothing; a caller already over its token limit is refused
before its prompt is tokenized; a prompt whose length alone puts it past the context is
refused without tokenizing it; and one tenant's multi-megabyte prompt, tokenized in a worker
thread, does not stall other tenants' queries.

Most tests need no replica (every request here is refused before dispatch): a live control
plane over the in-memory provider, on SQLite. The stall test runs against the instant-engine
Ray Serve replicas; the NUL-name test needs PostgreSQL (SQLite compares a NUL just fine)."""

from __future__ import annotations

import json
import logging
import random
import socket
import string
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from control_plane.query.requests import Tokenizers
from tests.control_plane.conftest import ADMIN_TOKEN, LiveServer, live_server, make_settings
from tests.control_plane.fake_provider import InstantProvider
from tests.control_plane.query_fixtures import create_endpoint, instant_ray_server, usage_rows
from workers.tokenizer import Cl100kTokenizer

SUFFIX = uuid.uuid4().hex[:6]
CHAT = f"limits-chat-{SUFFIX}"
EMBED = f"limits-embed-{SUFFIX}"
LIMITED = f"limits-tokens-{SUFFIX}"
MAX_BODY = 4 * 1024 * 1024  # gateway.max_body_bytes, by default
CONTEXT = 4096  # dbrx-tiny's
HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class CountingCl100k(Cl100kTokenizer):
    """DBRX's real tokenizer, counting the texts it is asked to tokenize."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        self.calls += 1
        return super().encode(text, allow_special=allow_special)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("limits")
    settings = make_settings(f"sqlite:///{root / 'moeserve.db'}", root, shared_endpoints=[])
    with live_server(settings, InstantProvider()) as live, live.client() as http:
        create_endpoint(http, CHAT)
        create_endpoint(http, EMBED, task="llm/v1/embeddings")
        create_endpoint(http, LIMITED)
        # Nothing fits a budget of 0 tokens: every caller of LIMITED is over its limit.
        limits = {"rate_limits": [{"tokens": 0, "key": "endpoint", "renewal_period": "minute"}]}
        put = http.put(f"/api/2.0/serving-endpoints/{LIMITED}/ai-gateway", json=limits)
        assert put.status_code == 200, put.text
        live.plane.gateway.targets.forget(LIMITED)
        yield live


@pytest.fixture
def counting(server: LiveServer) -> Iterator[CountingCl100k]:
    """The server's tokenizers replaced by one counting tokenizer (restored afterwards)."""
    tokenizer = CountingCl100k()
    gateway = server.plane.gateway
    kept = gateway.tokenizers
    gateway.tokenizers = Tokenizers(lambda _name: tokenizer)
    try:
        yield tokenizer
    finally:
        gateway.tokenizers = kept


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log record, uvicorn's "Exception in ASGI application" included (its logger
    does not propagate to the root)."""
    uvicorn_error = logging.getLogger("uvicorn.error")
    uvicorn_error.addHandler(caplog.handler)
    caplog.set_level(logging.INFO)
    try:
        yield caplog
    finally:
        uvicorn_error.removeHandler(caplog.handler)


def _server_errors(logged: pytest.LogCaptureFixture) -> list[str]:
    """Errors and tracebacks logged (a client's mistake must log neither)."""
    bad = [r for r in logged.records if r.levelno >= logging.WARNING and r.exc_info]
    bad += [r for r in logged.records if r.levelno >= logging.ERROR and not r.exc_info]
    return [r.getMessage() for r in bad]


def _error(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert set(body) == {"error_code", "message", "details"}, body  # the Databricks shape
    return body


def _raw_post(
    server: LiveServer,
    path: str,
    content_length: int,
    sent: bytes,
    headers: dict[str, str] | None = None,
    timeout_s: float = 5.0,
) -> tuple[int, bytes]:
    """POST announcing `content_length` bytes but sending only `sent`, then wait for the
    answer: a server that reads the body first never answers (the socket times out)."""
    address = urlsplit(server.url)
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {address.hostname}:{address.port}",
        "Content-Type: application/json",
        f"Content-Length: {content_length}",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    with socket.create_connection((address.hostname, address.port), timeout=timeout_s) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + sent)
        received = b""
        try:
            while b"\r\n\r\n" not in received or not _complete(received):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                received += chunk
        except TimeoutError:
            pytest.fail(f"no answer within {timeout_s} s: the server waits for the whole body")
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _complete(received: bytes) -> bool:
    head, _, body = received.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return True


# -- finding 7: the body limit -----------------------------------------------------------------
def test_a_body_over_the_limit_is_a_413_in_the_error_shape(server: LiveServer) -> None:
    too_long = {"model": CHAT, "messages": [{"role": "user", "content": "x" * MAX_BODY}]}
    with httpx.Client(base_url=server.url, headers=HEADERS, timeout=30) as http:
        for path, body in [
            ("/serving-endpoints/chat/completions", too_long),
            (f"/serving-endpoints/{CHAT}/invocations", {**too_long, "model": None}),
        ]:
            response = http.post(path, json=body)
            assert response.status_code == 413, response.text
            error = _error(response)
            assert str(MAX_BODY) in error["message"] and "max_body_bytes" in error["message"]

        # No Content-Length (a chunked upload): refused once the bytes read pass the limit.
        def chunks() -> Iterator[bytes]:
            for _ in range(MAX_BODY // 1024 + 2):
                yield b" " * 1024

        chunked = http.post("/serving-endpoints/chat/completions", content=chunks())
        assert chunked.status_code == 413 and "Content-Length" not in chunked.request.headers
        # At the limit exactly: read, and judged as usual (an unknown endpoint here).
        padded = json.dumps({"model": "nope", "messages": []}).encode()
        padded += b" " * (MAX_BODY - len(padded))
        at_limit = http.post("/serving-endpoints/chat/completions", content=padded)
        assert at_limit.status_code == 404, at_limit.text


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read(
    server: LiveServer,
) -> None:
    for path in ("/serving-endpoints/chat/completions", f"/serving-endpoints/{CHAT}/invocations"):
        status, body = _raw_post(server, path, 50 * 1024 * 1024, b'{"messages": [', HEADERS)
        assert status == 413
        assert json.loads(body)["error_code"] == "BAD_REQUEST"


# -- finding 8: authentication first, nesting, no tracebacks ---------------------------------
def test_unauthenticated_callers_get_401_before_their_body_is_read(server: LiveServer) -> None:
    garbage = bytes(range(256)) * 64  # not JSON, not even UTF-8
    paths = ["/serving-endpoints/chat/completions", f"/serving-endpoints/{CHAT}/invocations"]
    for path in paths:
        for headers in ({}, {"Authorization": "Bearer dapi-no-such-token"}):
            response = httpx.post(server.url + path, content=garbage, headers=headers)
            assert response.status_code == 401, response.text
            assert _error(response)["error_code"] == "UNAUTHENTICATED"
            # A huge body (past the limit, too) that never arrives: answered all the same.
            status, body = _raw_post(server, path, 50 * 1024 * 1024, garbage[:100], headers)
            assert status == 401 and json.loads(body)["error_code"] == "UNAUTHENTICATED"


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_deeply_nested_json_is_a_400_that_logs_no_traceback(
    server: LiveServer, logged: pytest.LogCaptureFixture, depth: int
) -> None:
    nested = _nested(depth)
    bodies = [
        ("/serving-endpoints/chat/completions", f'{{"model": "{CHAT}", "messages": {nested}}}'),
        (f"/serving-endpoints/{CHAT}/invocations", f'{{"messages": {nested}}}'),
        (f"/serving-endpoints/{EMBED}/invocations", f'{{"input": [{nested}]}}'),
        ("/serving-endpoints/embeddings", nested),
    ]
    with httpx.Client(base_url=server.url, headers=HEADERS, timeout=30) as http:
        for path, body in bodies:
            response = http.post(path, content=body.encode())
            assert response.status_code == 400, (path, response.text[:300])
            error = _error(response)
            assert error["error_code"] == "INVALID_PARAMETER_VALUE"
            assert "nests too deeply" in error["message"]
    assert not _server_errors(logged)


def test_a_nul_in_the_endpoint_name_is_a_404_on_postgresql(
    postgres_url: str, tmp_path: Path, logged: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL refuses to even compare a string holding NUL: the name must never reach
    it (it was a 500 with a traceback)."""
    settings = make_settings(postgres_url, tmp_path, shared_endpoints=[])
    messages = [{"role": "user", "content": "hi"}]
    with live_server(settings, InstantProvider()) as live, live.client() as http:
        by_path = http.post("/serving-endpoints/a%00b/invocations", json={"messages": messages})
        by_model = http.post(
            "/serving-endpoints/chat/completions", json={"model": "a\x00b", "messages": messages}
        )
        too_long = http.post(
            "/serving-endpoints/chat/completions", json={"model": "m" * 5000, "messages": []}
        )
    for response in (by_path, by_model, too_long):
        assert response.status_code == 404, response.text
        assert len(_error(response)["message"]) < 200
    assert not _server_errors(logged)


def test_a_client_leaving_mid_body_is_no_server_error(
    server: LiveServer, logged: pytest.LogCaptureFixture
) -> None:
    address = urlsplit(server.url)
    for path in ("/serving-endpoints/chat/completions", f"/serving-endpoints/{CHAT}/invocations"):
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {address.hostname}\r\nContent-Length: 100000\r\n"
            f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n\r\n"
        )
        with socket.create_connection((address.hostname, address.port), timeout=5) as conn:
            conn.sendall(head.encode() + b'{"messages": [')
            time.sleep(0.3)  # authenticated; the server is reading the body
    time.sleep(1.0)
    assert not _server_errors(logged)


# -- finding 7: the cheap refusals come before tokenizing ------------------------------------
def test_a_caller_over_its_token_limit_is_refused_before_its_prompt_is_tokenized(
    server: LiveServer, counting: CountingCl100k
) -> None:
    # 300,000 characters: within the context by their length alone
    messages = [{"role": "user", "content": "hello " * 50_000}]
    with httpx.Client(base_url=server.url, headers=HEADERS, timeout=30) as http:
        for path, body in [
            (f"/serving-endpoints/{LIMITED}/invocations", {"messages": messages}),
            ("/serving-endpoints/chat/completions", {"model": LIMITED, "messages": messages}),
        ]:
            started = time.monotonic()
            response = http.post(path, json=body)
            elapsed = time.monotonic() - started
            assert response.status_code == 429, response.text
            assert _error(response)["error_code"] == "REQUEST_LIMIT_EXCEEDED"
            assert int(response.headers["Retry-After"]) >= 1
            assert elapsed < 2.0
    assert counting.calls == 0, "the prompt was tokenized for a caller over its limit"
    assert usage_rows(server, LIMITED) == []  # never accepted


def test_a_prompt_past_the_context_by_its_length_alone_is_refused_without_tokenizing(
    server: LiveServer, counting: CountingCl100k
) -> None:
    # 600,000 characters are at least 600,000 / 128 > 4,096 cl100k tokens.
    long_text = "".join(random.Random(5).choices(string.ascii_letters, k=600_000))
    messages = [{"role": "user", "content": long_text[:300_000]}]
    messages.append({"role": "user", "content": long_text[300_000:]})
    cases = [
        (
            f"/serving-endpoints/{CHAT}/invocations",
            {"messages": messages},
            "the prompt has at least 4688 tokens",
        ),
        (
            "/serving-endpoints/embeddings",
            {"model": EMBED, "input": ["short", long_text]},
            "input 1 has at least 4688 tokens",
        ),
    ]
    with httpx.Client(base_url=server.url, headers=HEADERS, timeout=30) as http:
        for path, body, said in cases:
            started = time.monotonic()
            response = http.post(path, json=body)
            elapsed = time.monotonic() - started
            assert response.status_code == 400, response.text
            error = _error(response)
            assert said in error["message"] and f"context is {CONTEXT} tokens" in error["message"]
            assert elapsed < 2.0
    assert counting.calls == 0, "a prompt past the context by its length alone was tokenized"
    assert usage_rows(server, CHAT) == []  # refused before acceptance, like a malformed body


# -- finding 7: one tenant's big prompt does not stall the others ----------------------------
STALL_CHAT = f"stall-chat-{SUFFIX}"
STALL_EMBED = f"stall-embed-{SUFFIX}"
STALL_LIMITED = f"stall-limited-{SUFFIX}"
TOKEN_LIMIT = 5000


@pytest.fixture(scope="module")
def ray_server(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("stall")
    with instant_ray_server(root) as live, live.client() as http:
        create_endpoint(http, STALL_CHAT)
        create_endpoint(http, STALL_EMBED, task="llm/v1/embeddings")
        create_endpoint(http, STALL_LIMITED)
        limit = {"tokens": TOKEN_LIMIT, "key": "endpoint", "renewal_period": "minute"}
        put = http.put(
            f"/api/2.0/serving-endpoints/{STALL_LIMITED}/ai-gateway",
            json={"rate_limits": [limit]},
        )
        assert put.status_code == 200, put.text
        live.plane.gateway.targets.forget(STALL_LIMITED)
        yield live


def test_a_multi_megabyte_prompt_does_not_stall_other_tenants(ray_server: LiveServer) -> None:
    """Seven inputs of 500,000 random letters (3.5 MB, under the 4 MiB limit; each within
    the context by its length, past it once tokenized): over a second of tokenizing, which
    used to run on the event loop. Meanwhile another caller's small chat queries must keep
    their usual latency."""
    rng = random.Random(7)
    inputs = ["".join(rng.choices(string.ascii_lowercase, k=500_000)) for _ in range(7)]
    big: dict[str, Any] = {}

    def send_big() -> None:
        with httpx.Client(base_url=ray_server.url, headers=HEADERS, timeout=120) as http:
            started = time.monotonic()
            response = http.post(f"/serving-endpoints/{STALL_EMBED}/invocations", json=big_body)
            big.update(status=response.status_code, text=response.text)
            big["s"] = time.monotonic() - started

    big_body = {"input": inputs}
    small = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    chat = f"/serving-endpoints/{STALL_CHAT}/invocations"
    latencies: list[float] = []
    with httpx.Client(base_url=ray_server.url, headers=HEADERS, timeout=60) as http:
        for _ in range(3):  # warm: connections, handles, tokenizer
            assert http.post(chat, json=small).status_code == 200
        sender = threading.Thread(target=send_big)
        sender.start()
        time.sleep(0.3)  # the body is on its way, then being tokenized
        while sender.is_alive():
            started = time.monotonic()
            response = http.post(chat, json=small)
            latencies.append(time.monotonic() - started)
            assert response.status_code == 200, response.text
            time.sleep(0.02)
        sender.join()
    assert big["status"] == 400 and "context" in big["text"], big
    assert big["s"] > 0.5, big  # it did take a while: the others were tested meanwhile
    assert max(latencies) < 0.5, (sorted(latencies)[-5:], big)
    assert len(latencies) >= 5, (latencies, big)


def test_a_large_prompt_is_counted_exactly_by_the_token_limits(ray_server: LiveServer) -> None:
    """A large prompt's lower bound only decides early refusals: admission counts its exact
    tokens, and a refusal records none."""
    large = {"messages": [{"role": "user", "content": "hello " * 3000}], "max_tokens": 1}
    small = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    path = f"/serving-endpoints/{STALL_LIMITED}/invocations"
    with httpx.Client(base_url=ray_server.url, headers=HEADERS, timeout=60) as http:
        first = http.post(path, json=large)
        assert first.status_code == 200, first.text
        used = first.json()["usage"]["total_tokens"]
        assert TOKEN_LIMIT / 2 < used < TOKEN_LIMIT  # 18,000 characters: over 3,000 tokens
        second = http.post(path, json=large)  # at least 141 tokens by length: tokenized,
        assert second.status_code == 429, second.text  # then refused with its exact count
        third = http.post(path, json=small)  # the refusal recorded nothing: room for this
        assert third.status_code == 200, third.text
    rows = usage_rows(ray_server, STALL_LIMITED)
    assert sorted(r["input_token_count"] + r["output_token_count"] for r in rows) == sorted(
        [used, third.json()["usage"]["total_tokens"]]
    )
