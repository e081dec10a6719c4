"""`LocalRayProvider` against the session's real Ray and Serve (shared with other tests: every
application here carries a unique name prefix and is deleted at the end)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import ray

from deploy.providers.base import (
    AppNotFound,
    AppPhase,
    AppSpec,
    AppStatus,
    ReplicaGroup,
    UnsupportedCapacity,
    Workload,
    amount,
    replica_shape,
)
from deploy.providers.local import LOG_TAIL_LINES, LocalRayProvider, summarize_failure
from workers.engine.config import EngineConfig
from workers.engine.request import TokenChunk
from workers.model.source import ModelSource
from workers.serve.config import WorkerAppConfig

PREFIX = f"test-deploy-{uuid.uuid4().hex[:6]}-"
TINY = ModelSource(preset="dbrx-tiny", seed=1)
MISSING_CHECKPOINT = f"/nonexistent/{PREFIX}checkpoint"
SETTLED = (AppPhase.RUNNING, AppPhase.FAILED, AppPhase.UNHEALTHY)


def worker(**overrides: object) -> WorkerAppConfig:
    fields: dict[str, object] = {
        "model": TINY,
        "engine": EngineConfig(kv_cache_tokens=2048),
        "graceful_shutdown_timeout_s": 1,
        **overrides,
    }
    return WorkerAppConfig.model_validate(fields)


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.1)


def replica_actors(app: str) -> set[str]:
    """Names of the app's replica actors (Serve names them SERVE_REPLICA::app#deployment#id)."""
    names = ray.util.list_named_actors(all_namespaces=True)
    return {a["name"] for a in names if a["name"].startswith(f"SERVE_REPLICA::{app}#")}


@dataclass
class Deployed:
    spec: AppSpec
    phases: list[AppPhase]  # every phase seen from deploy until it settled, in order
    settled: AppStatus


@pytest.fixture(scope="module")
def provider(ray_cluster: None) -> Iterator[LocalRayProvider]:
    provider = LocalRayProvider()
    provider.start()  # reuses the session's Ray
    yield provider
    for name in provider.list_apps(PREFIX):
        provider.delete(name)
    wait_for(lambda: not provider.list_apps(PREFIX), "this module's apps to be deleted")
    provider.stop()


@pytest.fixture(scope="module")
def apps(provider: LocalRayProvider) -> dict[str, Deployed]:
    """A healthy app and one whose replica cannot load its checkpoint, deployed together
    (they start in parallel) and followed until both settle."""
    broken_model = ModelSource(checkpoint=MISSING_CHECKPOINT, tokenizer="cl100k_base")
    specs = {
        "ok": AppSpec(f"{PREFIX}ok", worker()),
        "broken": AppSpec(f"{PREFIX}broken", worker(model=broken_model)),
    }
    for spec in specs.values():
        provider.deploy(spec)
    phases: dict[str, list[AppPhase]] = {key: [] for key in specs}
    latest: dict[str, AppStatus] = {}

    def settled() -> bool:
        for key, spec in specs.items():
            status = provider.status(spec.name)
            assert status is not None, f"{spec.name} vanished"
            if not phases[key] or phases[key][-1] != status.phase:
                phases[key].append(status.phase)
            latest[key] = status
        return all(status.phase in SETTLED for status in latest.values())

    wait_for(settled, "the apps to settle", timeout_s=45)
    return {key: Deployed(spec, phases[key], latest[key]) for key, spec in specs.items()}


def test_deploy_goes_from_deploying_to_running_with_one_replica(
    apps: dict[str, Deployed],
) -> None:
    ok = apps["ok"]
    assert ok.phases == [AppPhase.DEPLOYING, AppPhase.RUNNING]
    assert ok.settled == AppStatus(
        name=ok.spec.name,
        phase=AppPhase.RUNNING,
        message="",
        running_replicas=1,
        target_replicas=1,
    )


def test_deploying_a_running_name_again_changes_nothing(
    provider: LocalRayProvider, apps: dict[str, Deployed]
) -> None:
    spec = apps["ok"].spec
    replicas = replica_actors(spec.name)
    assert len(replicas) == 1
    provider.deploy(AppSpec(spec.name, worker()))
    # A redeploy would roll out a new version: DEPLOYING at once, then a new replica.
    status = provider.status(spec.name)
    assert status is not None
    assert status.phase == AppPhase.RUNNING and status.running_replicas == 1
    time.sleep(0.5)  # long enough for Serve's control loop to start a replacement
    assert replica_actors(spec.name) == replicas


def test_handle_streams_token_chunks_of_a_running_app(
    provider: LocalRayProvider, apps: dict[str, Deployed]
) -> None:
    name = apps["ok"].spec.name
    handle = provider.handle(name)
    request = {"prompt_token_ids": [1, 2, 3], "max_tokens": 5, "temperature": 0, "ignore_eos": True}
    chunks = list(handle.options(stream=True).generate.remote(request))
    assert all(isinstance(chunk, TokenChunk) for chunk in chunks)
    assert sum(len(chunk.token_ids) for chunk in chunks) == 5
    assert chunks[-1].finish_reason == "length"
    assert provider.handle(name) is handle  # one handle (and router) per app
    with pytest.raises(AppNotFound, match="no-such-app"):
        provider.handle(f"{PREFIX}no-such-app")


def test_list_apps_returns_only_names_with_the_prefix(
    provider: LocalRayProvider, apps: dict[str, Deployed]
) -> None:
    ok, broken = apps["ok"].spec.name, apps["broken"].spec.name
    everything = provider.list_apps(PREFIX)
    assert {ok, broken} <= set(everything)
    assert all(name.startswith(PREFIX) for name in everything)
    only_ok = provider.list_apps(f"{PREFIX}ok")
    assert list(only_ok) == [ok]
    assert only_ok[ok].phase == AppPhase.RUNNING
    assert provider.list_apps(f"{PREFIX}nothing-") == {}


def test_a_replica_that_cannot_load_fails_with_the_cause_and_a_new_deploy_retries(
    provider: LocalRayProvider, apps: dict[str, Deployed]
) -> None:
    broken = apps["broken"]
    assert broken.phases == [AppPhase.DEPLOYING, AppPhase.FAILED]
    assert broken.settled.running_replicas == 0
    message = broken.settled.message
    assert f"{MISSING_CHECKPOINT}/config.json not found" in message
    assert "CheckpointError" in message and "\x1b[" not in message

    provider.deploy(broken.spec)
    status = provider.status(broken.spec.name)
    assert status is not None and status.phase == AppPhase.DEPLOYING  # FAILED until redeployed
    provider.delete(broken.spec.name)  # stop its retries; the others need the CPUs


def test_delete_removes_an_app_and_ignores_missing_names(provider: LocalRayProvider) -> None:
    name = f"{PREFIX}doomed"
    provider.deploy(AppSpec(name, worker()))
    assert provider.status(name) is not None
    provider.delete(name)
    status = provider.status(name)
    assert status is None or status.phase == AppPhase.DELETING
    wait_for(lambda: provider.status(name) is None, f"{name} to be deleted", timeout_s=20)
    provider.delete(name)
    provider.delete(f"{PREFIX}never-deployed")


def replicas_of(config: WorkerAppConfig, replicas: int = 1) -> Workload:
    return Workload((ReplicaGroup("e", replica_shape(config), replicas),))


def test_check_supported_rejects_more_gpus_than_one_node_has(provider: LocalRayProvider) -> None:
    largest_node_gpus = int(max(node["Resources"].get("GPU", 0) for node in ray.nodes()))
    needed = largest_node_gpus + 1
    cuda = worker(device="cuda", shards=needed)
    with pytest.raises(UnsupportedCapacity, match=f"needs {amount('GPU', needed)} on one") as no:
        provider.check_supported(replicas_of(cuda))
    assert f"has {amount('GPU', largest_node_gpus)} on its largest node" in str(no.value)
    assert "workload_type CPU" in str(no.value) and "--ray-address" in str(no.value)
    # deploy checks first: nothing reaches Serve.
    with pytest.raises(UnsupportedCapacity):
        provider.deploy(AppSpec(f"{PREFIX}cuda", cuda))
    assert provider.status(f"{PREFIX}cuda") is None


def test_check_supported_counts_cpus_of_every_replica(provider: LocalRayProvider) -> None:
    cpus = int(ray.cluster_resources()["CPU"])
    provider.check_supported(replicas_of(worker(), replicas=cpus))  # exactly the cluster
    with pytest.raises(UnsupportedCapacity, match=f"need {cpus + 1} CPUs together") as no:
        provider.check_supported(replicas_of(worker(), replicas=cpus + 1))
    assert f"has {cpus} CPUs in all" in str(no.value)


def test_logs_are_the_replica_log_lines(
    provider: LocalRayProvider, apps: dict[str, Deployed]
) -> None:
    name = apps["ok"].spec.name
    lines = provider.logs(name).splitlines()
    assert any(f"{name}_llm" in line for line in lines)  # Serve tags lines app_deployment
    assert len(lines) <= LOG_TAIL_LINES
    assert provider.logs(f"{PREFIX}no-such-app") == ""


def test_stop_leaves_a_ray_it_did_not_start_running(ray_cluster: None) -> None:
    provider = LocalRayProvider()
    with pytest.raises(RuntimeError, match="start"):
        provider.status("anything")
    provider.start()
    provider.start()  # idempotent
    provider.stop()
    assert ray.is_initialized()


def test_a_serve_failure_message_is_cut_to_its_exception() -> None:
    message = (
        "The deployment failed to start 3 times in a row. See controller logs for details. "
        "Error:\n\x1b[36mray::ServeReplica:app:llm.initialize_and_get_metadata()\x1b[39m\n"
        '  File "replica.py", line 1928, in initialize\n'
        "RuntimeError: Traceback (most recent call last):\n"
        '  File "server.py", line 68, in __init__\n'
        "    self.engine = build(config)\n"
        "    ^^^^^^^^^^^\n"
        "pydantic.ValidationError: 1 validation error\n"
        "  field required\n"
    )
    assert summarize_failure(message) == (
        "The deployment failed to start 3 times in a row. See controller logs for details. "
        "pydantic.ValidationError: 1 validation error field required"
    )
    assert summarize_failure("\x1b[31mplain\x1b[0m") == "plain"
    assert summarize_failure("x" * 5000).endswith("...")
