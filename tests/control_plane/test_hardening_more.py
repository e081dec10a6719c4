"""Issue 14, finding 12, the rest (the first part is test_hardening.py):

- an unexpected error is a JSON 500 in the Databricks shape that tells the client nothing but
  a request id, is logged once (traceback and that id), and leaves the HTTP/1.1 keep-alive
  connection usable: it used to be closed under the client after the 500;
- token ids outside the model's vocabulary, sent as embeddings input, are a 400 naming the
  id and the valid range (they failed in the replica: a 503), and token-id prompts to
  completions are a 400 too;
- billing times with a time-zone offset are normalised to UTC; times past the calendar once
  in UTC, naive ones and garbage are 400s saying what is expected, never 500s; and filters
  no row could match (a NUL, which PostgreSQL refuses) are 400s as well.

The failures of the first part are injected by replacing a service function with one that
raises; the token ids go through instant-engine Ray Serve replicas (the edge check, not the
replica, refuses them); billing runs on PostgreSQL."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import openai
import pytest

from bench.scratch_db import scratch_postgres
from control_plane.endpoints.service import EndpointService
from control_plane.query import routes as query_routes
from tests.control_plane.conftest import LiveServer, live_server, make_settings, wait_for
from tests.control_plane.fake_provider import InstantProvider
from tests.control_plane.query_fixtures import create_endpoint, instant_ray_server, openai_client
from tests.control_plane.test_billing_usage_listing import _account, _insert
from tests.control_plane.test_tenancy import default_workspace
from workers.model.presets import preset

SECRET = "postgresql://billing:hunter2@db.internal"  # what a real failure might carry
CHAT = "databricks-dbrx-tiny"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The control plane over the in-memory provider, on PostgreSQL; its shared chat
    endpoint live."""
    root = tmp_path_factory.mktemp("hardening")
    with (
        scratch_postgres("moeserve_hardening") as url,
        live_server(make_settings(url, root), InstantProvider()) as live,
        live.client() as http,
    ):

        def ready() -> bool:
            endpoint = http.get(f"/api/2.0/serving-endpoints/{CHAT}").json()
            return bool(endpoint["state"]["ready"] == "READY")

        wait_for(ready, what=f"{CHAT} READY")
        yield live


# -- an unexpected error ----------------------------------------------------------------------
def _local_port(response: httpx.Response) -> int:
    """The client-side port of the connection that carried `response`."""
    return int(response.extensions["network_stream"].get_extra_info("client_addr")[1])


def _fail(*_: object, **__: object) -> Any:
    raise RuntimeError(f"lost the connection to {SECRET}")


@pytest.mark.parametrize("where", ["management route", "query door"])
def test_an_unexpected_error_is_a_json_500_that_keeps_the_connection_and_logs_once(
    server: LiveServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    where: str,
) -> None:
    if where == "management route":
        monkeypatch.setattr(EndpointService, "listed", _fail)
        method, path, body = "GET", "/api/2.0/serving-endpoints", None
    else:  # the query routes are answered by a middleware of their own, before FastAPI's
        monkeypatch.setattr(query_routes, "parse_request", _fail)
        body = {"messages": [{"role": "user", "content": "hi"}]}
        method, path = "POST", f"/serving-endpoints/{CHAT}/invocations"
    server_log = logging.getLogger("uvicorn.error")  # the server's own, not propagated
    server_log.addHandler(caplog.handler)
    caplog.set_level(logging.INFO)
    try:
        with server.client() as http:
            failed = http.request(method, path, json=body)
            after = http.get(f"/api/2.0/serving-endpoints/{CHAT}")
            assert _local_port(after) == _local_port(failed), "the connection was not kept"
    finally:
        server_log.removeHandler(caplog.handler)

    assert failed.status_code == 500, failed.text
    error = failed.json()
    assert error["error_code"] == "INTERNAL_ERROR"
    (info,) = error["details"]
    request_id = info["request_id"]
    assert info["@type"] == "type.googleapis.com/google.rpc.RequestInfo"
    assert failed.headers["X-Request-Id"] == request_id
    assert request_id in error["message"]
    assert "hunter2" not in failed.text and "RuntimeError" not in failed.text
    assert after.status_code == 200, after.text

    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert len(tracebacks) == 1, [r.getMessage() for r in tracebacks]
    assert request_id in tracebacks[0].getMessage()
    assert tracebacks[0].exc_info is not None
    assert isinstance(tracebacks[0].exc_info[1], RuntimeError)


# -- token ids outside the vocabulary ---------------------------------------------------------
VOCAB = preset("dbrx-tiny").args.vocab_size  # 100352: cl100k's ids, padded


@pytest.fixture(scope="module")
def ray_server(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    suffix = uuid.uuid4().hex[:6]
    names = {"embed": f"oov-embed-{suffix}", "complete": f"oov-complete-{suffix}"}
    with instant_ray_server(tmp_path_factory.mktemp("oov")) as live, live.client() as http:
        create_endpoint(http, names["embed"], task="llm/v1/embeddings")
        create_endpoint(http, names["complete"], task="llm/v1/completions")
        yield live, names


def test_token_ids_outside_the_vocabulary_are_a_400_naming_the_id_and_the_range(
    ray_server: Any,
) -> None:
    live, names = ray_server
    path = f"/serving-endpoints/{names['embed']}/invocations"
    with live.client() as http:
        for fine in ([1, 2, 3], [VOCAB - 1], [[0], [7, VOCAB - 1]]):
            response = http.post(path, json={"input": fine})
            assert response.status_code == 200, (fine, response.text)
        refused = {
            "input 0 holds token id 100352 (position 1)": [5, VOCAB],
            "input 1 holds token id -1 (position 1)": [[1, 2], [3, -1]],
            "input 0 holds token id 1000000000000 (position 0)": [10**12],
        }
        for named, bad in refused.items():
            response = http.post(path, json={"input": bad})
            assert response.status_code == 400, (bad, response.text)
            assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
            message = response.json()["message"]
            assert named in message and f"0 to {VOCAB - 1}" in message, message

        # Completions take a text prompt only: token ids are a 400 as well, not a 503.
        complete = f"/serving-endpoints/{names['complete']}/invocations"
        for prompt in ([1, VOCAB], [[1, 2]], [VOCAB]):
            response = http.post(complete, json={"prompt": prompt, "max_tokens": 2})
            assert response.status_code == 400, (prompt, response.text)
            assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"

    # The OpenAI client's route says the same.
    client = openai_client(live)
    with pytest.raises(openai.BadRequestError) as refused_error:
        client.embeddings.create(model=names["embed"], input=[[1, VOCAB + 5]])
    assert f"token id {VOCAB + 5}" in str(refused_error.value)
    assert len(client.embeddings.create(model=names["embed"], input=[[1, 2]]).data) == 1


# -- billing times ----------------------------------------------------------------------------
BILLING = "/api/2.0/billing"
_WINDOW = {"start_time": "2026-10-01T00:00:00Z", "end_time": "2026-12-01T00:00:00Z"}
# Refused with a 400 naming the parameter; never a 500.
BAD_TIMES = {
    "naive": "2026-11-01T00:00:00",  # which zone? (a date alone is fine: midnight UTC)
    "garbage": "next tuesday",
    "offset past the calendar in UTC": "0001-01-01T00:00:00+02:00",
    "offset past the calendar's end in UTC": "9999-12-31T23:00:00-02:00",
    "no such month": "2026-13-01T00:00:00Z",
    "offset over a day": "2026-11-01T00:00:00+25:00",
    "a '+' sent unencoded": "2026-11-01T00:00:00 02:00",
    "NUL": "2026-11-01T00:00:00\x00Z",
}


def _assert_refused(response: httpx.Response, parameter: str) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    message = response.json()["message"]
    assert parameter in message, message
    assert "ISO 8601" in message or "time zone" in message or "out of range" in message


def _assert_an_offset_selects_its_utc_instant(
    server: LiveServer, http: httpx.Client, parameter: str
) -> None:
    """A row at 22:30 UTC is after 00:00+02:00 (22:00 UTC), before 00:00 UTC, and
    18:30-04:00 is exactly its instant."""
    workspace_id = default_workspace(server)
    request_id = f"offset-{uuid.uuid4().hex[:8]}"
    at = datetime(2026, 10, 31, 22, 30, tzinfo=UTC)
    _insert(
        server,
        request_id,
        workspace_id=workspace_id,
        account_id=_account(server, workspace_id),
        at=at,
    )

    def listed(value: str) -> bool:
        response = http.get(f"{BILLING}/endpoint-usage", params={parameter: value})
        assert response.status_code == 200, response.text
        return request_id in [
            row["databricks_request_id"] for row in response.json()["endpoint_usage"]
        ]

    selected = {  # [start_time, end_time) around the row's instant
        "2026-11-01T00:00:00+02:00": parameter == "start_time",
        "2026-11-01T00:00:00Z": parameter == "end_time",
        "2026-10-31T18:30:00-04:00": parameter == "start_time",
        "2026-10-31T18:31:00-04:00": parameter == "end_time",
    }
    assert {value: listed(value) for value in selected} == selected


@pytest.mark.parametrize("parameter", ["start_time", "end_time"])
@pytest.mark.parametrize("route", ["endpoint-usage", "usage", "estimate"])
def test_billing_times_with_offsets_are_normalised_and_bad_ones_are_400s(
    server: LiveServer, route: str, parameter: str
) -> None:
    window = _WINDOW
    extra = {"endpoint_name": CHAT} if route == "estimate" else {}
    with server.client() as http:

        def get(value: str) -> httpx.Response:
            return http.get(f"{BILLING}/{route}", params={**window, **extra, parameter: value})

        for offset, utc in [
            ("2026-11-01T00:00:00+02:00", "2026-10-31T22:00:00Z"),
            ("2026-11-01T00:00:00-05:30", "2026-11-01T05:30:00Z"),
            ("2026-11-01T00:00:00Z", "2026-11-01T00:00:00Z"),
            ("2026-11-01", "2026-11-01T00:00:00Z"),
        ]:
            response = get(offset)
            assert response.status_code == 200, (offset, response.text)
            if route == "estimate":
                assert response.json()[parameter] == utc
        if route == "endpoint-usage":
            _assert_an_offset_selects_its_utc_instant(server, http, parameter)
        for case, bad in BAD_TIMES.items():
            response = get(bad)
            assert response.status_code == 400, (case, response.text)
            _assert_refused(response, parameter)


def test_billing_filters_no_row_could_match_are_400s_not_500s(server: LiveServer) -> None:
    """NUL is what PostgreSQL refuses with an error (a 500 until now); overlong names could
    never match either."""
    assert server.plane.engine.dialect.name == "postgresql"  # where a NUL is an error
    with server.client() as http:
        for route, params, named in [
            ("invoices", {"period": "2026-11\x00"}, "period"),
            ("invoices", {"period": "2026-13"}, "period"),
            ("invoices", {"period": "November"}, "period"),
            ("estimate", {"endpoint_name": "chat\x00", **_WINDOW}, "endpoint_name"),
            ("usage", {"endpoint_name": "x" * 300}, "endpoint_name"),
            ("usage", {"workspace_id": "ws\x00"}, "workspace_id"),
            ("estimate", {"endpoint_name": CHAT, "workspace_id": "w\x00", **_WINDOW}, "workspace"),
        ]:
            response = http.get(f"{BILLING}/{route}", params=params)
            assert response.status_code == 400, (route, params, response.text)
            assert named in response.json()["message"]
        assert http.get(f"{BILLING}/invoices", params={"period": "2026-11"}).status_code == 200
        missing = http.get(f"{BILLING}/invoices/inv%00")
        assert missing.status_code == 404, missing.text
