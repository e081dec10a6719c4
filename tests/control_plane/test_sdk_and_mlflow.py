"""The real `databricks-sdk` and `mlflow.deployments` clients against a live control plane
that deploys real Ray Serve applications (the session's Ray, a SQLite database, small
random DBRX checkpoints registered through the model registry).

One server and one SDK-created endpoint serve the whole module; the tests run in file
order and the ones that change the endpoint (config update, delete) come last.
"""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from databricks.sdk import WorkspaceClient
from databricks.sdk.config import Config
from databricks.sdk.errors import (
    InvalidParameterValue,
    PermissionDenied,
    ResourceAlreadyExists,
    ResourceDoesNotExist,
)
from databricks.sdk.service.serving import (
    AiGatewayGuardrailParameters,
    AiGatewayGuardrailPiiBehavior,
    AiGatewayGuardrailPiiBehaviorBehavior,
    AiGatewayGuardrails,
    AiGatewayRateLimit,
    AiGatewayRateLimitKey,
    AiGatewayRateLimitRenewalPeriod,
    AiGatewayUsageTrackingConfig,
    EndpointCoreConfigInput,
    EndpointStateConfigUpdate,
    EndpointStateReady,
    EndpointTag,
    Route,
    ServedEntityInput,
    ServingEndpointDetailed,
    TrafficConfig,
)
from ray import serve

from control_plane.endpoints.capacity import APP_PREFIX, endpoint_app_prefix
from control_plane.settings import GatewaySettings, WorkerDefaults
from tests.control_plane.conftest import ADMIN_TOKEN, LiveServer, live_server, make_settings
from tests.control_plane.conftest import wait_for as wait_until
from tests.control_plane.query_fixtures import usage_rows
from workers.engine.config import EngineConfig
from workers.model.checkpoint import save_checkpoint
from workers.model.loading import build_random
from workers.model.presets import preset

MODEL = "tiny-chat"
CREATE_TIMEOUT_S = 120
SUFFIX = uuid.uuid4().hex[:6]


def small_dbrx_checkpoint(path: Path, seed: int) -> Path:
    """A one-layer DBRX with the cl100k vocabulary and no tokenizer.json (served with
    cl100k): a few MB of layers beside the embeddings, so a replica starts quickly."""
    args = preset("dbrx-tiny").args.replace(
        n_layers=1,
        d_model=64,
        n_heads=2,
        n_kv_heads=1,
        head_dim=32,
        ffn_hidden_size=64,
        n_experts=4,
        top_k=2,
        max_seq_len=2048,
    )
    return save_checkpoint(build_random(args, seed=seed), path)


@pytest.fixture(scope="module")
def server(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The control plane over the real `LocalRayProvider`, with model `tiny-chat` versions
    "1" and "2" (different weights, so a config update deploys a new Serve app)."""
    root = tmp_path_factory.mktemp("sdk")
    settings = make_settings(
        f"sqlite:///{root / 'moeserve.db'}",
        root,
        workers=WorkerDefaults(engine=EngineConfig(kv_cache_tokens=2048)),
        shared_endpoints=[],  # nothing to deploy but what the tests create
        retire_grace_s=0.5,
        gateway=GatewaySettings(lookup_cache_ttl_s=0.5),
    )
    with live_server(settings) as live, live.client() as http:
        for version, seed in (("1", 1), ("2", 2)):
            source = small_dbrx_checkpoint(root / "models" / f"ckpt-v{version}", seed)
            response = http.post(
                "/api/2.0/models", json={"name": MODEL, "version": version, "source": str(source)}
            )
            assert response.status_code == 200, response.text
        yield live
        # Leave no Serve app behind for later modules sharing this Ray.
        for endpoint in http.get("/api/2.0/serving-endpoints").json().get("endpoints", []):
            http.delete(f"/api/2.0/serving-endpoints/{endpoint['name']}")
        wait_until(lambda: not _apps(), timeout=30, what="every endpoint's app to be deleted")


def _apps(endpoint_id: str | None = None) -> set[str]:
    """Ray Serve applications of one endpoint, or of every control-plane endpoint."""
    prefix = APP_PREFIX if endpoint_id is None else endpoint_app_prefix(endpoint_id)
    return {name for name in serve.status().applications if name.startswith(prefix)}


def sdk(server: LiveServer, token: str = ADMIN_TOKEN) -> WorkspaceClient:
    # 429/503 are retried for 300 s by default; a test wants the error, not the wait.
    # WorkspaceClient() has no such argument; it is a `Config` attribute.
    return WorkspaceClient(config=Config(host=server.url, token=token, retry_timeout_seconds=15))


def entity(version: str) -> ServedEntityInput:
    return ServedEntityInput(
        entity_name=MODEL,
        entity_version=version,
        workload_size="Small",
        scale_to_zero_enabled=False,
    )


@dataclass
class Created:
    name: str
    id: str
    seconds: float
    returned: ServingEndpointDetailed  # what create_and_wait returned
    apps: set[str]  # its Serve applications right after it became READY


@pytest.fixture(scope="module")
def endpoint(server: LiveServer) -> Created:
    name = f"sdk-chat-{SUFFIX}"
    started = time.monotonic()
    detailed = sdk(server).serving_endpoints.create_and_wait(
        name=name,
        config=EndpointCoreConfigInput(name=name, served_entities=[entity("1")]),
        timeout=timedelta(seconds=CREATE_TIMEOUT_S),
    )
    seconds = time.monotonic() - started
    print(f"\ncreate_and_wait reached READY in {seconds:.1f} s")
    assert detailed.id
    return Created(name, detailed.id, seconds, detailed, _apps(detailed.id))


def test_create_and_wait_returns_a_ready_endpoint_serving_version_1(endpoint: Created) -> None:
    assert endpoint.seconds < CREATE_TIMEOUT_S
    returned = endpoint.returned
    assert returned.name == endpoint.name
    assert returned.state is not None and returned.config is not None
    assert returned.state.ready == EndpointStateReady.READY
    assert returned.state.config_update == EndpointStateConfigUpdate.NOT_UPDATING
    assert returned.config.config_version == 1
    assert [e.entity_version for e in returned.config.served_entities or []] == ["1"]
    assert len(endpoint.apps) == 1  # one Serve app for its one served entity


def test_get_shows_the_ready_config_and_list_contains_the_endpoint(
    server: LiveServer, endpoint: Created
) -> None:
    client = sdk(server)
    got = client.serving_endpoints.get(endpoint.name)
    assert got.id == endpoint.id and got.name == endpoint.name
    assert got.state is not None and got.config is not None
    assert got.state.ready == EndpointStateReady.READY
    assert got.state.config_update == EndpointStateConfigUpdate.NOT_UPDATING
    assert got.config.config_version == 1
    [served] = got.config.served_entities or []
    assert (served.name, served.entity_name, served.entity_version) == (f"{MODEL}-1", MODEL, "1")
    assert served.state is not None and served.state.deployment is not None
    assert served.state.deployment.value == "DEPLOYMENT_READY"
    assert got.pending_config is None
    assert got.creation_timestamp and got.creation_timestamp > 1_600_000_000_000  # ms

    listed = {e.name: e for e in client.serving_endpoints.list()}
    assert endpoint.name in listed
    assert listed[endpoint.name].id == endpoint.id
    summary_state = listed[endpoint.name].state
    assert summary_state is not None and summary_state.ready == EndpointStateReady.READY


def test_ready_endpoint_answers_a_chat_invocation(server: LiveServer, endpoint: Created) -> None:
    with server.client() as http:
        response = http.post(
            f"/serving-endpoints/{endpoint.name}/invocations",
            json={"messages": [{"role": "user", "content": "hello world"}], "max_tokens": 8},
        )
    assert response.status_code == 200, response.text
    assert response.headers["served-model-name"] == f"{MODEL}-1"
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"] and isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 2  # chat template + "hello world"
    assert 1 <= usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_real_engine_through_openai_logprobs_stream_and_ledger(
    server: LiveServer, endpoint: Created
) -> None:
    """The real engine (not the instant one): logprobs, a stream with include_usage, and
    the usage the client saw equals the engine's counts in the ledger."""
    from openai import OpenAI

    client = OpenAI(api_key=ADMIN_TOKEN, base_url=f"{server.url}/serving-endpoints", max_retries=0)
    greedy = client.chat.completions.create(
        model=endpoint.name,
        messages=[{"role": "user", "content": "hello world"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = greedy.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    assert content[0].top_logprobs[0].logprob >= content[0].top_logprobs[1].logprob
    chunks = list(
        client.chat.completions.create(
            model=endpoint.name,
            messages=[{"role": "user", "content": "hello world"}],
            max_tokens=4,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == greedy.choices[0].message.content  # same greedy tokens either way
    usage = chunks[-1].usage
    assert usage is not None and greedy.usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        greedy.usage.prompt_tokens,
        greedy.usage.completion_tokens,
    )
    ledger = {row["databricks_request_id"]: row for row in usage_rows(server, endpoint.name)}
    row = ledger[chunks[0].id.split("-", 1)[1]]
    assert (row["input_token_count"], row["output_token_count"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )


def test_patch_adds_and_deletes_tags(server: LiveServer, endpoint: Created) -> None:
    endpoints = sdk(server).serving_endpoints
    added = endpoints.patch(
        endpoint.name,
        add_tags=[EndpointTag(key="team", value="ml"), EndpointTag(key="cost-center", value="42")],
    )
    assert {(t.key, t.value) for t in added.tags or []} == {("team", "ml"), ("cost-center", "42")}

    after = endpoints.patch(
        endpoint.name,
        add_tags=[EndpointTag(key="team", value="infra")],
        delete_tags=["cost-center"],
    )
    assert [(t.key, t.value) for t in after.tags or []] == [("team", "infra")]
    stored = endpoints.get(endpoint.name).tags or []
    assert [(t.key, t.value) for t in stored] == [("team", "infra")]


def test_put_ai_gateway_echoes_and_stores_the_settings(
    server: LiveServer, endpoint: Created
) -> None:
    endpoints = sdk(server).serving_endpoints
    limit = AiGatewayRateLimit(
        calls=1000,
        key=AiGatewayRateLimitKey.USER,
        renewal_period=AiGatewayRateLimitRenewalPeriod.MINUTE,
    )
    guardrails = AiGatewayGuardrails(
        input=AiGatewayGuardrailParameters(
            invalid_keywords=["secret"],
            pii=AiGatewayGuardrailPiiBehavior(behavior=AiGatewayGuardrailPiiBehaviorBehavior.NONE),
        )
    )
    echoed = endpoints.put_ai_gateway(
        endpoint.name,
        rate_limits=[limit],
        usage_tracking_config=AiGatewayUsageTrackingConfig(enabled=True),
        guardrails=guardrails,
    )
    assert echoed.rate_limits == [limit]
    assert echoed.usage_tracking_config == AiGatewayUsageTrackingConfig(enabled=True)
    assert echoed.guardrails == guardrails

    stored = endpoints.get(endpoint.name).ai_gateway
    assert stored is not None
    assert stored.rate_limits == [limit]
    assert stored.usage_tracking_config == AiGatewayUsageTrackingConfig(enabled=True)


def test_errors_arrive_as_the_sdks_typed_exceptions(server: LiveServer, endpoint: Created) -> None:
    endpoints = sdk(server).serving_endpoints
    with pytest.raises(ResourceDoesNotExist):
        endpoints.get(f"missing-{SUFFIX}")

    with pytest.raises(ResourceAlreadyExists):
        endpoints.create(
            name=endpoint.name,
            config=EndpointCoreConfigInput(name=endpoint.name, served_entities=[entity("1")]),
        )

    two = [
        ServedEntityInput(**{**entity("1").as_dict(), "name": "a"}),
        ServedEntityInput(**{**entity("1").as_dict(), "name": "b"}),
    ]
    uneven = TrafficConfig(
        routes=[
            Route(served_entity_name="a", traffic_percentage=60),
            Route(served_entity_name="b", traffic_percentage=30),
        ]
    )
    with pytest.raises(InvalidParameterValue, match="sum to 100"):
        endpoints.create(
            name=f"uneven-{SUFFIX}",
            config=EndpointCoreConfigInput(
                name=f"uneven-{SUFFIX}", served_entities=two, traffic_config=uneven
            ),
        )
    unknown = ServedEntityInput(entity_name="no-such-model", entity_version="1")
    with pytest.raises(InvalidParameterValue, match="not registered"):
        endpoints.update_config(endpoint.name, served_entities=[unknown])

    # Nothing of the rejected requests was stored.
    names = {e.name for e in endpoints.list()}
    assert f"uneven-{SUFFIX}" not in names
    current = endpoints.get(endpoint.name)
    assert current.pending_config is None
    assert current.state is not None
    assert current.state.config_update == EndpointStateConfigUpdate.NOT_UPDATING


def test_can_query_user_reads_but_cannot_update_or_delete(
    server: LiveServer, endpoint: Created
) -> None:
    with server.client() as http:
        [workspace] = http.get("/api/2.0/workspaces").json()["workspaces"]
        user = http.post(
            f"/api/2.0/workspaces/{workspace['workspace_id']}/users",
            json={"user_name": f"querier-{SUFFIX}@example.com"},
        )
        assert user.status_code == 200, user.text
        granted = http.patch(
            f"/api/2.0/permissions/serving-endpoints/{endpoint.id}",
            json={
                "access_control_list": [
                    {"user_name": user.json()["user_name"], "permission_level": "CAN_QUERY"}
                ]
            },
        )
        assert granted.status_code == 200, granted.text

    endpoints = sdk(server, user.json()["token_value"]).serving_endpoints
    seen = endpoints.get(endpoint.name)  # the token works: CAN_QUERY includes viewing
    assert seen.permission_level is not None and seen.permission_level.value == "CAN_QUERY"
    with pytest.raises(PermissionDenied):
        endpoints.update_config(endpoint.name, served_entities=[entity("2")])
    with pytest.raises(PermissionDenied):
        endpoints.delete(endpoint.name)

    admin_view = sdk(server).serving_endpoints.get(endpoint.name)
    assert admin_view.config is not None and admin_view.config.config_version == 1
    assert admin_view.pending_config is None


def test_update_config_and_wait_rolls_to_version_2_and_removes_the_old_app(
    server: LiveServer, endpoint: Created
) -> None:
    endpoints = sdk(server).serving_endpoints
    started = time.monotonic()
    updated = endpoints.update_config_and_wait(
        endpoint.name, served_entities=[entity("2")], timeout=timedelta(seconds=CREATE_TIMEOUT_S)
    )
    print(f"\nupdate_config_and_wait finished in {time.monotonic() - started:.1f} s")
    assert updated.state is not None
    assert updated.state.config_update == EndpointStateConfigUpdate.NOT_UPDATING

    got = endpoints.get(endpoint.name)
    assert got.state is not None and got.state.ready == EndpointStateReady.READY
    assert got.config is not None and got.config.config_version == 2
    [served] = got.config.served_entities or []
    assert (served.name, served.entity_version) == (f"{MODEL}-2", "2")
    assert served.state is not None and served.state.deployment is not None
    assert served.state.deployment.value == "DEPLOYMENT_READY"
    assert got.config.traffic_config is not None
    [route] = got.config.traffic_config.routes or []
    assert (route.served_entity_name, route.traffic_percentage) == (f"{MODEL}-2", 100)

    # The version-1 app is deleted after the retire grace; the version-2 app remains.
    [old_app] = endpoint.apps
    wait_until(
        lambda: old_app not in _apps(endpoint.id), timeout=30, what="the v1 app to be removed"
    )
    [new_app] = _apps(endpoint.id)
    assert new_app != old_app and f"-{MODEL}-2-" in new_app


def test_delete_removes_the_endpoint_and_its_app(server: LiveServer, endpoint: Created) -> None:
    endpoints = sdk(server).serving_endpoints
    endpoints.delete(endpoint.name)
    with pytest.raises(ResourceDoesNotExist):
        endpoints.get(endpoint.name)
    assert endpoint.name not in {e.name for e in endpoints.list()}
    wait_until(lambda: not _apps(endpoint.id), timeout=30, what="the endpoint's apps to go")


def test_mlflow_deployments_client_creates_waits_for_and_deletes_an_endpoint(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.deployments import get_deploy_client

    monkeypatch.setenv("DATABRICKS_HOST", server.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    # What mlflow sends (through the SDK's requests session): verb, path, final status and
    # the statuses of any redirects requests followed on the way.
    exchanges: list[tuple[str, str, int, list[int]]] = []
    send = requests.Session.send

    def recording_send(self: requests.Session, request: Any, **kwargs: Any) -> Any:
        response = send(self, request, **kwargs)
        redirects = [r.status_code for r in response.history]
        exchanges.append((request.method, request.path_url, response.status_code, redirects))
        return response

    monkeypatch.setattr(requests.Session, "send", recording_send)
    client = get_deploy_client("databricks")
    name = f"mlflow-chat-{SUFFIX}"
    served = {
        "entity_name": MODEL,
        "entity_version": "1",
        "workload_size": "Small",
        "scale_to_zero_enabled": False,
    }
    with warnings.catch_warnings():  # name + config as separate arguments: deprecated form
        warnings.simplefilter("ignore", UserWarning)
        created = client.create_endpoint(name, config={"served_entities": [served]})
    assert created["name"] == name
    assert created["state"] == {"ready": "NOT_READY", "config_update": "IN_PROGRESS"}
    # The documented full-payload form reaches the same route.
    # (mlflow rebuilds the error response from error_code with its own status table, where
    # RESOURCE_ALREADY_EXISTS is 400; the server answered 409.)
    with pytest.raises(requests.HTTPError) as duplicate:
        client.create_endpoint(config={"name": name, "config": {"served_entities": [served]}})
    assert duplicate.value.response is not None
    assert duplicate.value.response.json()["error_code"] == "RESOURCE_ALREADY_EXISTS"

    def ready() -> dict[str, Any] | None:
        got = client.get_endpoint(name)
        return got if got["state"]["ready"] == "READY" else None

    got = wait_until(ready, timeout=CREATE_TIMEOUT_S, what="the mlflow-created endpoint")
    assert got["state"]["config_update"] == "NOT_UPDATING"
    assert got["config"]["served_entities"][0]["entity_name"] == MODEL
    assert name in {e["name"] for e in client.list_endpoints()}
    assert len(_apps(got["id"])) == 1

    client.delete_endpoint(name)
    with server.client() as http:
        gone = http.get(f"/api/2.0/serving-endpoints/{name}")
    assert gone.status_code == 404
    assert gone.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    wait_until(lambda: not _apps(got["id"]), timeout=30, what="its Serve app to be deleted")

    # mlflow creates and lists at ".../serving-endpoints/" (trailing slash). A redirect
    # to the slash-less path works on plain http, but behind a TLS-terminating proxy it
    # points at http:// and `requests` drops the Authorization header on that downgrade.
    sent = {(verb, path) for verb, path, _, _ in exchanges}
    assert {("POST", "/api/2.0/serving-endpoints/"), ("GET", "/api/2.0/serving-endpoints/")} <= sent
    redirected = [e for e in exchanges if e[3]]
    assert not redirected, f"the server redirected mlflow's calls: {redirected}"
