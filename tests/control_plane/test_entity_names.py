"""Served-entity names as Databricks gives them, through the real `databricks-sdk`: a
three-part (Unity Catalog style) model name without an explicit entity name is served as
`<last part>-<version>`, and an endpoint created with the legacy `served_models` shows them
in `config.served_models` as well as in `served_entities`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from databricks.sdk.service.serving import (
    EndpointCoreConfigInput,
    ServedEntityInput,
    ServedModelInput,
)

from control_plane.endpoints.validation import default_entity_name
from tests.control_plane.conftest import LiveServer
from tests.control_plane.query_fixtures import wait_ready
from tests.control_plane.test_model_sources import register, small_checkpoint
from tests.control_plane.test_sdk_and_mlflow import sdk


@pytest.mark.parametrize(
    ("name", "version", "expected"),
    [
        ("main.default.support_bot", "2", "support_bot-2"),
        ("system.ai.dbrx_instruct", "3", "dbrx_instruct-3"),
        ("dbrx-tiny", "1", "dbrx-tiny-1"),
        ("team.model", "7", "model-7"),
    ],
)
def test_the_default_entity_name_is_the_last_part_and_the_version(
    name: str, version: str, expected: str
) -> None:
    assert default_entity_name(name, version) == expected


def test_a_three_part_name_gets_databricks_default_entity_name(
    instant_server: LiveServer, tmp_path: Path
) -> None:
    source = small_checkpoint(tmp_path / "models" / "support")
    with instant_server.client() as http:
        registered = register(http, source, name="main.default.support_bot")
        assert registered.status_code == 200, registered.text
    client = sdk(instant_server)
    client.serving_endpoints.create(
        name="support",
        config=EndpointCoreConfigInput(
            name="support",
            served_entities=[
                ServedEntityInput(
                    entity_name="main.default.support_bot",
                    entity_version="1",
                    workload_size="Small",
                    scale_to_zero_enabled=True,
                )
            ],
        ),
    )
    got = client.serving_endpoints.get("support")
    config = got.config or got.pending_config
    assert config is not None and config.served_entities
    (entity,) = config.served_entities
    assert (entity.name, entity.entity_name) == ("support_bot-1", "main.default.support_bot")
    assert not config.served_models  # not given as served_models: not shown so
    with instant_server.client() as http:
        raw = http.get("/api/2.0/serving-endpoints/support").json()
    assert "served_models" not in (raw.get("config") or raw["pending_config"])


def test_legacy_served_models_are_shown_as_served_models(instant_server: LiveServer) -> None:
    client = sdk(instant_server)
    client.serving_endpoints.create(
        name="legacy",
        config=EndpointCoreConfigInput(
            name="legacy",
            served_models=[
                ServedModelInput(
                    model_name="dbrx-tiny",
                    model_version="1",
                    workload_size="Small",
                    scale_to_zero_enabled=False,
                )
            ],
        ),
    )
    got = client.serving_endpoints.get("legacy")
    config = got.config or got.pending_config
    assert config is not None and config.served_models and config.served_entities
    (model,) = config.served_models
    assert (model.name, model.model_name, model.model_version) == ("dbrx-tiny-1", "dbrx-tiny", "1")
    assert model.workload_size == "Small"
    (entity,) = config.served_entities
    assert entity.name == model.name  # one entity, shown both ways
    with instant_server.client() as http:
        raw = http.get("/api/2.0/serving-endpoints/legacy").json()
    shown = (raw.get("config") or raw["pending_config"])["served_models"][0]
    assert "entity_name" not in shown and shown["model_name"] == "dbrx-tiny"


def test_databricks_system_model_names_serve_and_are_listed(
    instant_server: LiveServer, tmp_path: Path
) -> None:
    """`system.ai.dbrx_instruct` version 3 (the default mapping: the built-in dbrx-tiny)
    serves through the SDK, is listed by the models API, and is queried like any model; an
    unmapped system name or another version is a 400 naming what is served."""
    client = sdk(instant_server)
    client.serving_endpoints.create(
        name="dbrx",
        config=EndpointCoreConfigInput(
            name="dbrx",
            served_entities=[
                ServedEntityInput(
                    entity_name="system.ai.dbrx_instruct",
                    entity_version="3",
                    workload_size="Small",
                    scale_to_zero_enabled=False,
                )
            ],
        ),
    )
    with instant_server.client() as http:
        wait_ready(http, "dbrx")
    got = client.serving_endpoints.get("dbrx")
    config = got.config
    assert config is not None and config.served_entities
    (entity,) = config.served_entities
    assert (entity.name, entity.entity_name, entity.entity_version) == (
        "dbrx_instruct-3",
        "system.ai.dbrx_instruct",
        "3",
    )
    with instant_server.client() as http:
        listed = http.get("/api/2.0/models").json()["models"]
        (system,) = [m for m in listed if m["name"] == "system.ai.dbrx_instruct"]
        assert (system["version"], system["source"], system["builtin"]) == (
            "3",
            "preset:dbrx-tiny",
            True,
        )
        info = http.get(
            "/api/2.0/serving-endpoints/get-model-optimization-info/system.ai.dbrx_instruct/3"
        )
        assert info.status_code == 200 and info.json()["model_type"] == "dbrx", info.text
        for name, version, said in [
            ("system.ai.dbrx_instruct", "2", "version '3' only"),
            ("system.ai.llama_v3_70b_instruct", "1", "system.ai.dbrx_instruct (version 3)"),
        ]:
            refused = http.post(
                "/api/2.0/serving-endpoints",
                json={
                    "name": "nope",
                    "config": {
                        "served_entities": [
                            {
                                "entity_name": name,
                                "entity_version": version,
                                "workload_size": "Small",
                            }
                        ]
                    },
                },
            )
            assert refused.status_code == 400 and said in refused.json()["message"], refused.text
        taken = register(
            http, small_checkpoint(tmp_path / "models" / "x"), name="system.ai.dbrx_instruct"
        )
        assert taken.status_code == 409, taken.text


def test_a_system_models_checkpoint_is_verified_once_per_state_of_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listing models names every system model: a checkpoint-mapped one is read (its
    safetensors headers checked) once, and again only when its files change."""
    from control_plane import registry

    source = small_checkpoint(tmp_path / "models" / "cached")
    reads: list[Path] = []
    real = registry.verify_checkpoint

    def counted(path: Path) -> Any:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(registry, "verify_checkpoint", counted)
    family = registry.verified_family(source)
    assert [registry.verified_family(source) for _ in range(5)] == [family] * 5
    assert len(reads) == 1
    (source / "config.json").write_text((source / "config.json").read_text() + " ")
    assert registry.verified_family(source) == family
    assert len(reads) == 2, "a changed file is checked again"
