"""The model registry (checkpoint validation) and Alembic migrations, on both databases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.orm import Session

from billing.schema import METADATA as BILLING_METADATA
from control_plane.db import build_engine, upgrade
from control_plane.db.migrate import alembic_config
from control_plane.db.models import Base, Endpoint
from control_plane.endpoints.config import Task
from control_plane.endpoints.states import Deployment
from control_plane.registry import UNUSABLE_SOURCE
from tests.control_plane.conftest import LiveServer
from workers.model.checkpoint import save_checkpoint
from workers.model.loading import build_random
from workers.model.presets import preset


def tiny_checkpoint(path: Path, family: str = "dbrx-tiny") -> Path:
    args = preset(family).args.replace(n_layers=1)
    save_checkpoint(build_random(args, seed=1), path)
    return path


def test_migrations_create_exactly_the_models_schema_and_rerun_cleanly(database_url: str) -> None:
    engine = build_engine(database_url)
    try:
        upgrade(engine)
        upgrade(engine)  # a second start finds nothing to do
        with engine.connect() as connection:
            # Alembic compares against a sequence of metadatas, as env.py's target_metadata.
            schema = [Base.metadata, BILLING_METADATA]
            context = MigrationContext.configure(connection)
            differences = compare_metadata(context, schema)  # type: ignore[arg-type]
        assert differences == []
    finally:
        engine.dispose()


def test_migration_0006_splits_deployment_states_from_retiring_apps(database_url: str) -> None:
    """Rows written before 0006 kept retire times and states in one map; after it they
    read back as typed `Deployments`, and a task-less endpoint is a chat endpoint."""
    engine = build_engine(database_url)
    try:
        with engine.connect() as connection:
            config = alembic_config(engine)
            config.attributes["connection"] = connection
            command.upgrade(config, "0005")
            connection.commit()
            now = "2026-12-01 00:00:00+00:00"
            connection.execute(
                sa.text("INSERT INTO accounts (id, name, created_at) VALUES ('a', 'a', :t)"),
                {"t": now},
            )
            old = {
                "ms-e-live": {"deployment": "DEPLOYMENT_READY", "deployment_state_message": ""},
                "ms-e-old": {"retire_at_ms": 1234},
            }
            connection.execute(
                sa.text(
                    "INSERT INTO endpoints (id, account_id, name, creator, description, "
                    "route_optimized, created_at, updated_at, config_version, ready, "
                    "config_update, deployments, tags) VALUES ('e', 'a', 'e', 'c', '', "
                    ":f, :t, :t, 0, 'NOT_READY', 'IN_PROGRESS', :d, '[]')"
                ),
                {"t": now, "d": json.dumps(old), "f": False},
            )
            connection.commit()
        upgrade(engine)
        with Session(engine) as session:
            endpoint = session.get(Endpoint, "e")
            assert endpoint is not None and endpoint.task == Task.CHAT
            assert endpoint.deployments.retiring == {"ms-e-old": 1234}
            assert endpoint.deployments.state("ms-e-live").deployment == Deployment.READY
            assert set(endpoint.deployments.states) == {"ms-e-live"}
    finally:
        engine.dispose()


def test_migration_0007_fills_usage_rows_with_the_model_their_interval_served(
    database_url: str,
) -> None:
    """Rows written before 0007 get the model, family and workload type of the interval
    their served entity had started by then; endpoint tags move to billing's table."""
    engine = build_engine(database_url)
    try:
        with engine.connect() as connection:
            config = alembic_config(engine)
            config.attributes["connection"] = connection
            command.upgrade(config, "0006")
            connection.commit()
            insert = sa.text(
                "INSERT INTO capacity_timeline (endpoint_id, account_id, workspace_id, "
                "endpoint_name, served_entity_name, entity_name, entity_version, workload_type, "
                "min_replicas, max_replicas, gpus_per_replica, provisioned_chunks, "
                "scale_to_zero_enabled, parked, woke_from_zero, started_at) VALUES ('e', 'a', "
                "'w', 'chat', 'current', :name, '1', :workload, 1, 1, 0, 0, :f, :f, :f, :t)"
            )
            connection.execute(
                insert,
                {
                    "name": "dbrx-tiny",
                    "workload": "CPU",
                    "f": False,
                    "t": "2026-12-01 10:00:00+00:00",
                },
            )
            connection.execute(
                insert,
                {
                    "name": "mixtral-tiny",
                    "workload": "GPU_SMALL",
                    "f": False,
                    "t": "2026-12-01 12:00:00+00:00",
                },
            )
            usage = sa.text(
                "INSERT INTO endpoint_usage (databricks_request_id, requester, status_code, "
                "request_time, served_entity_id, endpoint_name, endpoint_id, workspace_id, "
                "account_id, input_token_count, output_token_count, request_streaming) VALUES "
                "(:id, 'u', 200, :t, :served, 'chat', 'e', 'w', 'a', 1, 1, :f)"
            )
            for request_id, hour, served in (
                ("early", "09", "current"),  # before the first interval: its model
                ("dbrx", "11", "current"),
                ("mixtral", "13", "current"),
                ("orphan", "13", "gone"),
            ):
                connection.execute(
                    usage,
                    {
                        "id": request_id,
                        "t": f"2026-12-01 {hour}:00:00+00:00",
                        "served": served,
                        "f": False,
                    },
                )
            connection.execute(
                sa.text("INSERT INTO accounts (id, name, created_at) VALUES ('a', 'a', :t)"),
                {"t": "2026-12-01 00:00:00+00:00"},
            )
            connection.execute(
                sa.text(
                    "INSERT INTO endpoints (id, account_id, name, creator, description, "
                    "route_optimized, created_at, updated_at, config_version, ready, "
                    "config_update, deployments, tags, task) VALUES ('e', 'a', 'chat', 'c', '', "
                    ":f, :t, :t, 0, 'NOT_READY', 'IN_PROGRESS', '{}', :tags, 'llm/v1/chat')"
                ),
                {
                    "f": False,
                    "t": "2026-12-01 00:00:00+00:00",
                    "tags": json.dumps([{"key": "team", "value": "search"}]),
                },
            )
            connection.commit()
        upgrade(engine)
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text(
                    "SELECT databricks_request_id, entity_name, model_family, workload_type "
                    "FROM endpoint_usage ORDER BY databricks_request_id"
                )
            ).all()
            tags = connection.execute(sa.text("SELECT endpoint_id, tags FROM endpoint_tags")).all()
        assert [tuple(row) for row in rows] == [
            ("dbrx", "dbrx-tiny", "dbrx", "CPU"),
            ("early", "dbrx-tiny", "dbrx", "CPU"),
            ("mixtral", "mixtral-tiny", "mixtral", "GPU_SMALL"),
            ("orphan", "gone", "unknown", ""),
        ]
        [(endpoint_id, stored)] = tags
        assert endpoint_id == "e"
        assert (json.loads(stored) if isinstance(stored, str) else stored) == {"team": "search"}
    finally:
        engine.dispose()


def test_registered_checkpoints_are_validated_listed_and_unique(
    instant_server: LiveServer, tmp_path: Path
) -> None:
    client = instant_server.client()
    models = tmp_path / "models"  # the default model root: data_dir/models
    good = tiny_checkpoint(models / "good")
    record = client.post(
        "/api/2.0/models", json={"name": "tiny", "version": "1", "source": str(good)}
    )
    assert record.status_code == 200, record.text
    assert record.json()["model_type"] == "dbrx"
    listed = client.get("/api/2.0/models").json()["models"]
    names = {(m["name"], m["version"], m["builtin"]) for m in listed}
    assert {("dbrx-tiny", "1", True), ("mixtral-tiny", "1", True), ("tiny", "1", False)} <= names
    again = client.post(
        "/api/2.0/models", json={"name": "tiny", "version": "1", "source": str(good)}
    )
    assert again.status_code == 409

    def rejected(source: Path | str, needle: str, name: str = "bad") -> None:
        body: dict[str, Any] = {"name": name, "version": "1", "source": str(source)}
        response = client.post("/api/2.0/models", json=body)
        assert response.status_code == 400, response.text
        assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        assert needle in response.json()["message"], response.json()["message"]

    rejected(models / "missing", UNUSABLE_SOURCE)
    (models / "empty").mkdir()
    rejected(models / "empty", "config.json")
    broken = tiny_checkpoint(models / "broken")
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    rejected(broken, "llama")
    wrong = tiny_checkpoint(models / "wrong")
    config["d_model"] = config.get("d_model", 128) * 2
    (wrong / "config.json").write_text(json.dumps(config))
    rejected(wrong, "shape")
    rejected(tiny_checkpoint(models / "mixtral", "mixtral-tiny"), "tokenizer.json")
    builtin = {"name": "dbrx-tiny", "version": "1", "source": str(good)}
    clash = client.post("/api/2.0/models", json=builtin)
    assert clash.status_code == 409 and "built-in" in clash.json()["message"]

    # served by name and version; an unregistered version is a clear 400
    endpoint = {"served_entities": [{"entity_name": "tiny", "entity_version": "1"}]}
    assert (
        client.post(
            "/api/2.0/serving-endpoints", json={"name": "t", "config": endpoint}
        ).status_code
        == 200
    )
    endpoint["served_entities"][0]["entity_version"] = "2"
    response = client.post("/api/2.0/serving-endpoints", json={"name": "t2", "config": endpoint})
    assert response.status_code == 400 and "version '2'" in response.json()["message"]
