"""The probes an orchestrator sends (`/healthz`, `/readyz`, no token) and `moeserve
migrate`, which a deployment's migration job runs (the Helm chart's hook)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine

from tests.control_plane.conftest import LiveServer

MOESERVE = Path(sys.executable).with_name("moeserve")


def test_probes_answer_without_a_token(instant_server: LiveServer) -> None:
    with httpx.Client(base_url=instant_server.url) as anonymous:
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        ready = anonymous.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


def test_not_ready_while_the_database_does_not_answer(instant_server: LiveServer) -> None:
    plane = instant_server.plane
    working = plane.engine
    plane.engine = create_engine("postgresql+psycopg://probe@127.0.0.1:1/none")  # refused
    try:
        with httpx.Client(base_url=instant_server.url) as anonymous:
            ready = anonymous.get("/readyz")
            alive = anonymous.get("/healthz")
    finally:
        plane.engine = working
    assert ready.status_code == 503, ready.text
    assert ready.headers["Retry-After"] == "1"
    assert ready.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert "127.0.0.1" not in ready.text and "probe" not in ready.text  # says nothing of it
    assert alive.status_code == 200  # a restart would not bring the database back


def test_migrate_brings_a_new_database_to_the_newest_revision_and_is_idempotent(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    runs = [
        subprocess.run(
            [MOESERVE, "migrate", "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        for _ in range(2)
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr
    with sqlite3.connect(data_dir / "moeserve.db") as db:
        (revision,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    assert f"is at revision {revision}" in runs[1].stdout
    assert {"endpoints", "endpoint_usage", "audit_log"} <= tables, tables


def test_migrate_fails_clearly_without_showing_the_password(tmp_path: Any) -> None:
    run = subprocess.run(
        [MOESERVE, "migrate", "--db", "postgresql+psycopg://ops:s3cr3t-pw@127.0.0.1:1/none"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    assert "failed, schema unchanged" in run.stderr and "Connection refused" in run.stderr
    assert "s3cr3t-pw" not in run.stdout + run.stderr
    assert "Traceback" not in run.stderr
