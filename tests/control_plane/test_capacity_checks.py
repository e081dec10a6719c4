"""Capacity checks count everything a replica needs (issue 15): CPUs, GPUs and memory, for
every served entity of a config together, against the session's real Ray (replicas run the
instant engine). What the cluster can never host is a 400 at create or update that names
the resource; what it can host but not now is accepted, and the entity's state message says
what it waits for."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
import torch
from ray import serve
from ray.util.placement_group import placement_group, remove_placement_group

from control_plane.endpoints.capacity import APP_PREFIX
from tests.control_plane.conftest import LiveServer, wait_for
from tests.control_plane.query_fixtures import instant_ray_server, wait_ready
from workers.model.hf_config import hf_config_from_args
from workers.model.hf_format import internal_to_hf
from workers.model.presets import preset
from workers.model.transformer import MoETransformer

BASE = "/api/2.0/serving-endpoints"


def cluster_cpus() -> int:
    return int(ray.cluster_resources()["CPU"])


def cpus_per_replica() -> int:
    """More than half the cluster: one replica fits, two never do (whole CPUs, as Ray
    wants for quantities above one)."""
    return cluster_cpus() // 2 + 1


@pytest.fixture(scope="module")
def server(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("capacity")
    workers = {"cpus_per_shard": cpus_per_replica()}
    with instant_ray_server(root, workers=workers) as live:
        yield live


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client
        for endpoint in client.get(BASE).json().get("endpoints", []):
            client.delete(f"{BASE}/{endpoint['name']}")
        wait_for(lambda: not moeserve_apps(), timeout=30, what="apps to be deleted")


def moeserve_apps() -> list[str]:
    return [name for name in serve.status().applications if name.startswith(APP_PREFIX)]


def entity(name: str, model: str = "dbrx-tiny") -> dict[str, Any]:
    return {"name": name, "entity_name": model, "entity_version": "1", "workload_size": "Small"}


def config(*entities: dict[str, Any]) -> dict[str, Any]:
    shares = [100 // len(entities)] * len(entities)
    shares[0] += 100 - sum(shares)
    routes = [
        {"served_entity_name": e["name"], "traffic_percentage": share}
        for e, share in zip(entities, shares, strict=True)
    ]
    return {"served_entities": list(entities), "traffic_config": {"routes": routes}}


def refusal(response: httpx.Response) -> str:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    message: str = body["message"]
    return message


def test_entities_that_together_need_more_cpus_than_the_cluster_are_refused(
    http: httpx.Client,
) -> None:
    per_replica, cpus = cpus_per_replica(), cluster_cpus()
    response = http.post(BASE, json={"name": "two", "config": config(entity("a"), entity("b"))})
    message = refusal(response)
    assert f"need {2 * per_replica} CPUs together" in message
    assert f"a: 1 x {per_replica} CPUs" in message
    assert f"has {cpus} CPUs in all" in message
    assert http.get(f"{BASE}/two").status_code == 404  # nothing stored


def test_a_model_larger_than_any_node_s_memory_is_refused_naming_memory(
    server: LiveServer, http: httpx.Client
) -> None:
    largest = max(node["Resources"].get("memory", 0) for node in ray.nodes() if node["Alive"])
    source = sparse_checkpoint(server.plane.settings.data_dir / "models" / "big", 2 * largest)
    registered = http.post(
        "/api/2.0/models", json={"name": "big", "version": "1", "source": source}
    )
    assert registered.status_code == 200, registered.text
    message = refusal(
        http.post(BASE, json={"name": "big", "config": config(entity("big", model="big"))})
    )
    assert "served entity 'big': a replica needs" in message
    assert f"has {largest / 2**30:.1f} GiB of memory on its largest node" in message


def test_a_fitting_config_is_accepted_and_an_update_counts_the_live_apps_it_replaces(
    http: httpx.Client,
) -> None:
    created = http.post(BASE, json={"name": "fits", "config": config(entity("a"))})
    assert created.status_code == 200, created.text
    wait_ready(http, "fits")
    # A new app would run beside the live one until it is ready: together they never fit.
    message = refusal(http.put(f"{BASE}/fits/config", json=config(entity("b"))))
    assert "beside the live config" in message
    assert f"need {2 * cpus_per_replica()} CPUs together" in message
    assert "a (live): 1 x" in message
    # An update that keeps the app (same entity, same spec) counts it once.
    kept = http.put(f"{BASE}/fits/config", json=config(entity("a")))
    assert kept.status_code == 200, kept.text
    wait_ready(http, "fits", version=2)


def test_a_config_that_fits_but_not_now_says_what_it_waits_for(http: httpx.Client) -> None:
    per_replica, cpus = cpus_per_replica(), cluster_cpus()
    left = per_replica - 1  # other work holds all but this

    def free_cpus() -> int:
        return int(ray.available_resources().get("CPU", 0))

    # Replicas of apps deleted a moment ago (this module's, earlier modules') hand their
    # CPUs back only once their actors have stopped.
    wait_for(
        lambda: free_cpus() > left, timeout=60, what=lambda: f"> {left} CPUs free: {free_cpus()}"
    )
    free = free_cpus()
    others = placement_group([{"CPU": free - left}])
    ray.get(others.ready(), timeout=30)
    try:
        created = http.post(BASE, json={"name": "later", "config": config(entity("a"))})
        assert created.status_code == 200, created.text
        expected = f"waiting for {per_replica} CPUs: {left} of {cpus} free"

        def message() -> str:
            view = http.get(f"{BASE}/later").json()
            state: dict[str, Any] = view["pending_config"]["served_entities"][0]["state"]
            return str(state.get("deployment_state_message", ""))

        wait_for(
            lambda: message() == expected, timeout=20, what=lambda: f"{expected!r}: {message()!r}"
        )
        assert http.get(f"{BASE}/later").json()["state"]["config_update"] == "IN_PROGRESS"
    finally:
        remove_placement_group(others)
    wait_ready(http, "later")  # deployed once the CPUs are free


def sparse_checkpoint(path: Path, at_least_bytes: float) -> str:
    """A DBRX checkpoint of real width whose fp32 weights exceed `at_least_bytes`, in a
    sparse file: the safetensors header is real (registration checks every tensor's name
    and shape), the data is a hole, so it takes no disk space."""
    layers = 1
    while preset("dbrx-instruct").args.replace(n_layers=layers).parameter_count() * 4 <= (
        at_least_bytes
    ):
        layers += 1
    args = preset("dbrx-instruct").args.replace(n_layers=layers)
    with torch.device("meta"):
        tensors = internal_to_hf(args, dict(MoETransformer(args).state_dict()))
    header: dict[str, Any] = {}
    offset = 0
    for name, tensor in tensors.items():
        size = tensor.numel() * 2
        header[name] = {
            "dtype": "BF16",
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.mkdir(parents=True)
    with (path / "model.safetensors").open("wb") as file:
        file.write(struct.pack("<Q", len(raw)) + raw)
        file.truncate(8 + len(raw) + offset)
    (path / "config.json").write_text(json.dumps(hf_config_from_args(args, "bfloat16")))
    return str(path)
