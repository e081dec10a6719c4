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


def test_registered_checkpoints_are_validated_listed_and_unique(
    instant_server: LiveServer, tmp_path: Path
) -> None:
    client = instant_server.client()
    good = tiny_checkpoint(tmp_path / "good")
    record = client.post(
        "/api/2.0/models", json={"name": "tiny", "version": "1", "source": str(good)}
    )
    assert record.status_code == 200, record.text
    assert record.json()["model_type"] == "dbrx"
    models = client.get("/api/2.0/models").json()["models"]
    names = {(m["name"], m["version"], m["builtin"]) for m in models}
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

    rejected(tmp_path / "missing", "not a directory")
    (tmp_path / "empty").mkdir()
    rejected(tmp_path / "empty", "config.json")
    broken = tiny_checkpoint(tmp_path / "broken")
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    rejected(broken, "llama")
    wrong = tiny_checkpoint(tmp_path / "wrong")
    config["d_model"] = config.get("d_model", 128) * 2
    (wrong / "config.json").write_text(json.dumps(config))
    rejected(wrong, "shape")
    rejected(tiny_checkpoint(tmp_path / "mixtral", "mixtral-tiny"), "tokenizer.json")
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
