"""Smaller hardening points of issue 14 (finding 12): the SQLite file that holds prompts is
private to the server's user, and an absurd token lifetime is a 400, not a 500."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.control_plane.conftest import LiveServer, live_server, make_settings
from tests.control_plane.fake_provider import InstantProvider


def test_the_sqlite_database_is_private_to_the_server_user(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh" / "data"
    settings = make_settings(f"sqlite:///{data_dir / 'moeserve.db'}", data_dir)
    with live_server(settings, InstantProvider()):
        files = [data_dir / "moeserve.db", *data_dir.glob("moeserve.db-*")]
        modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in files}
        assert modes["moeserve.db"] == 0o600, modes
        assert all(mode & 0o077 == 0 for mode in modes.values()), modes  # -wal, -shm too
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700


def test_an_existing_world_readable_database_is_made_private(tmp_path: Path) -> None:
    database = tmp_path / "moeserve.db"
    database.touch(mode=0o644)
    database.chmod(0o644)
    settings = make_settings(f"sqlite:///{database}", tmp_path)
    with live_server(settings, InstantProvider()):
        assert stat.S_IMODE(database.stat().st_mode) == 0o600


def test_a_token_lifetime_past_any_date_is_a_400(instant_server: LiveServer) -> None:
    with instant_server.client() as http:
        response = http.post(
            "/api/2.0/token/create", json={"comment": "x", "lifetime_seconds": 10**15}
        )
        assert response.status_code == 400, response.text
        assert "lifetime_seconds" in response.json()["message"]
        ok = http.post("/api/2.0/token/create", json={"lifetime_seconds": 86_400})
        assert ok.status_code == 200, ok.text


def test_a_change_that_loses_a_race_with_a_delete_is_a_409_not_a_500(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tags patched while another request deletes the endpoint: the PATCH read the
    endpoint, the DELETE committed before the PATCH wrote, and SQLAlchemy raises
    StaleDataError at the PATCH's flush (the fuzz run hit it: a 500). The race itself is
    timing; here the flush fails as it does when it is lost."""
    from sqlalchemy.orm.exc import StaleDataError

    from control_plane.endpoints.service import EndpointService

    def lost_the_race(*_: object) -> None:
        raise StaleDataError("UPDATE statement on table 'endpoints' expected 1 row; 0 matched")

    settings = make_settings(f"sqlite:///{tmp_path / 'moeserve.db'}", tmp_path)
    with live_server(settings, InstantProvider()) as live, live.client() as http:
        config = {"served_entities": [{"entity_name": "dbrx-tiny", "entity_version": "1"}]}
        body = {"name": "raced", "config": config}
        assert http.post("/api/2.0/serving-endpoints", json=body).is_success
        monkeypatch.setattr(EndpointService, "patch_tags", lost_the_race)
        response = http.patch(
            "/api/2.0/serving-endpoints/raced/tags",
            json={"add_tags": [{"key": "team", "value": "a"}]},
        )
    assert response.status_code == 409, response.text
    assert response.json()["error_code"] == "RESOURCE_CONFLICT"
