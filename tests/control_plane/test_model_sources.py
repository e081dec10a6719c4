"""Registration sources are confined (issue 14, finding 2), on SQLite and PostgreSQL: a
checkpoint directory must resolve, symlinks and `..` followed, to a directory under the
operator's model roots; the first workspace to register a directory owns it, and another
workspace may use it only once an account admin shares it. Every refusal of a path is the
same 400, so an answer never tells whether a path exists or who registered it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.orm import Session

from control_plane import Settings
from control_plane.db import build_engine, upgrade
from control_plane.db.migrate import alembic_config
from control_plane.errors import InvalidParameter
from control_plane.registry import resolve
from tests.control_plane.conftest import LiveServer, live_server, make_settings
from tests.control_plane.fake_provider import InstantProvider
from tests.control_plane.test_tenancy import new_user, new_workspace
from workers.model.checkpoint import save_checkpoint
from workers.model.loading import build_random
from workers.model.presets import preset

# The one answer to every path a workspace may not register (control_plane.registry's
# UNUSABLE_SOURCE), spelled out: it is part of the API.
UNUSABLE = (
    "source must be a checkpoint directory under the server's model roots that this "
    "workspace may use"
)
REFUSED = {"error_code": "INVALID_PARAMETER_VALUE", "message": UNUSABLE, "details": []}


def small_checkpoint(path: Path) -> Path:
    """A one-layer DBRX with a small vocabulary: registers (and serves on the instant
    provider) without writing the real vocabulary's 50 MB embeddings."""
    args = preset("dbrx-tiny").args.replace(
        n_layers=1,
        d_model=32,
        n_heads=2,
        n_kv_heads=1,
        head_dim=16,
        ffn_hidden_size=32,
        n_experts=4,
        top_k=2,
        vocab_size=256,
    )
    return save_checkpoint(build_random(args, seed=1), path)


def register(client: httpx.Client, source: Path | str, name: str = "m") -> httpx.Response:
    return client.post(
        "/api/2.0/models", json={"name": name, "version": "1", "source": str(source)}
    )


def refused(response: httpx.Response) -> bool:
    return response.status_code == 400 and response.json() == REFUSED


def test_the_default_model_root_is_models_in_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings(data_dir=tmp_path).model_roots == [tmp_path / "models"]
    monkeypatch.setenv("MOESERVE_MODEL_ROOTS", json.dumps(["/srv/a", "/srv/b"]))
    assert Settings(data_dir=tmp_path).model_roots == [Path("/srv/a"), Path("/srv/b")]


def test_sources_that_escape_the_model_roots_get_one_answer_whether_or_not_they_exist(
    instant_server: LiveServer, tmp_path: Path
) -> None:
    root = tmp_path / "models"  # instant_server's data dir is tmp_path
    outside = small_checkpoint(tmp_path / "outside")  # a valid checkpoint, out of bounds
    small_checkpoint(root / "inside")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "file").write_text("not a directory")
    sources: dict[str, str] = {
        "missing under the root": str(root / "missing"),
        "missing outside": str(tmp_path / "nowhere"),
        "outside the root": str(outside),
        "dot-dot escape": f"{root}/inside/../../outside",
        "symlink escape": str(root / "escape"),
        "a file": str(root / "file"),
        "relative": "models/inside",
        "NUL byte": f"{root}/inside\x00",
        "system directory": "/etc",
    }
    with instant_server.client() as client:
        answers = {what: register(client, source) for what, source in sources.items()}
        wrong = {what: (r.status_code, r.text) for what, r in answers.items() if not refused(r)}
        assert wrong == {}
        # `..` that stays inside the root is fine.
        accepted = register(client, f"{root}/inside/../inside", name="ok")
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["source"] == str((root / "inside").resolve())


def test_a_workspace_cannot_use_another_workspaces_directory_until_an_admin_shares_it(
    instant_server: LiveServer, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    private = small_checkpoint(root / "team-a" / "private")
    small_checkpoint(private / "nested")  # a checkpoint below the owned one
    (root / "alias").symlink_to(private, target_is_directory=True)
    workspace_b = new_workspace(instant_server, "b")
    bob = instant_server.client(new_user(instant_server, workspace_b, "bob"))
    bob_admin = instant_server.client(new_user(instant_server, workspace_b, "boss", admin=True))
    admin = instant_server.client()  # account admin, workspace "default"
    with admin, bob, bob_admin:
        owned = register(admin, private, name="a-private")
        assert owned.status_code == 200, owned.text

        taken = register(bob, private)
        assert refused(taken), taken.text
        missing = register(bob, root / "team-a" / "gone")  # identical: nothing leaks
        assert (missing.status_code, missing.json()) == (taken.status_code, taken.json())
        above, below = root / "team-a", private / "nested"
        for attempt in (root / "alias", above, below, f"{below}/.."):
            assert refused(register(bob, attempt)), attempt
        assert register(bob_admin, private).json() == REFUSED  # a workspace admin too

        share = {"source": str(private), "add_workspace_ids": [workspace_b]}
        for outsider in (bob, bob_admin):  # sharing is for account admins
            assert outsider.patch("/api/2.0/models/sources", json=share).status_code == 403
            assert outsider.get("/api/2.0/models/sources").status_code == 403
        listed = admin.get("/api/2.0/models/sources").json()["sources"]
        owner = listed[0]["owner_workspace_id"]
        assert listed == [
            {"source": str(private.resolve()), "owner_workspace_id": owner, "shared_with": []}
        ]
        unknown = {**share, "source": str(root / "gone")}
        assert admin.patch("/api/2.0/models/sources", json=unknown).status_code == 404
        nobody = {**share, "add_workspace_ids": ["123"]}
        assert admin.patch("/api/2.0/models/sources", json=nobody).status_code == 404

        shared = admin.patch("/api/2.0/models/sources", json=share)
        assert shared.status_code == 200, shared.text
        assert shared.json()["shared_with"] == [workspace_b]
        used = register(bob, root / "alias", name="from-a")
        assert used.status_code == 200, used.text
        assert register(bob, private / "nested", name="nested").status_code == 200
        config = {"served_entities": [{"entity_name": "from-a", "entity_version": "1"}]}
        served = bob.post("/api/2.0/serving-endpoints", json={"name": "b-ep", "config": config})
        assert served.status_code == 200, served.text

        unshare = {"source": str(private), "remove_workspace_ids": [workspace_b]}
        assert admin.patch("/api/2.0/models/sources", json=unshare).json()["shared_with"] == []
        assert register(bob, private, name="again").json() == REFUSED
        again = bob.post("/api/2.0/serving-endpoints", json={"name": "b-ep2", "config": config})
        assert again.status_code == 400 and "not shared" in again.json()["message"], again.text
        # the owner is unaffected
        mine = {"served_entities": [{"entity_name": "a-private", "entity_version": "1"}]}
        ok = admin.post("/api/2.0/serving-endpoints", json={"name": "a-ep", "config": mine})
        assert ok.status_code == 200, ok.text


def test_the_model_roots_setting_confines_registration(database_url: str, tmp_path: Path) -> None:
    roots = [tmp_path / "r1", tmp_path / "r2"]
    in_second = small_checkpoint(roots[1] / "ckpt")
    in_default = small_checkpoint(tmp_path / "models" / "ckpt")  # not a root any more
    settings = make_settings(database_url, tmp_path, model_roots=roots, shared_endpoints=[])
    with live_server(settings, InstantProvider()) as server, server.client() as client:
        assert register(client, in_second).status_code == 200
        assert refused(register(client, in_default, name="other"))
    none = make_settings(database_url, tmp_path, model_roots=[], shared_endpoints=[])
    with live_server(none, InstantProvider()) as server, server.client() as client:
        assert refused(register(client, in_second, name="third"))


def test_migration_0008_makes_each_sources_first_registrant_its_owner(
    database_url: str,
) -> None:
    engine = build_engine(database_url)
    try:
        with engine.connect() as connection:
            config = alembic_config(engine)
            config.attributes["connection"] = connection
            command.upgrade(config, "0007")
            connection.commit()
            connection.execute(
                sa.text("INSERT INTO accounts (id, name, created_at) VALUES ('a', 'a', :t)"),
                {"t": "2026-12-01 00:00:00+00:00"},
            )
            for workspace in ("w1", "w2"):
                connection.execute(
                    sa.text(
                        "INSERT INTO workspaces (id, account_id, name, created_at) "
                        "VALUES (:w, 'a', :w, :t)"
                    ),
                    {"w": workspace, "t": "2026-12-01 00:00:00+00:00"},
                )
            insert = sa.text(
                "INSERT INTO registered_models (workspace_id, name, version, source, model_type, "
                "creator, created_at) VALUES (:w, :name, '1', :source, 'dbrx', 'c', :t)"
            )
            rows: list[dict[str, Any]] = [
                {
                    "w": "w2",
                    "name": "late",
                    "source": "/m/shared",
                    "t": "2026-12-02 00:00:00+00:00",
                },
                {
                    "w": "w1",
                    "name": "early",
                    "source": "/m/shared",
                    "t": "2026-12-01 00:00:00+00:00",
                },
                {"w": "w2", "name": "own", "source": "/m/own", "t": "2026-12-03 00:00:00+00:00"},
            ]
            for row in rows:
                connection.execute(insert, row)
            connection.commit()
        upgrade(engine)
        with engine.connect() as connection:
            owners = connection.execute(
                sa.text("SELECT path, workspace_id FROM model_sources ORDER BY path")
            ).all()
        assert [tuple(row) for row in owners] == [("/m/own", "w2"), ("/m/shared", "w1")]
        with Session(engine) as session:
            assert (
                resolve(session, "w1", "early", "1", system_models={}).source.checkpoint
                == "/m/shared"
            )
            assert (
                resolve(session, "w2", "own", "1", system_models={}).source.checkpoint == "/m/own"
            )
            with pytest.raises(InvalidParameter, match="not shared"):
                resolve(session, "w2", "late", "1", system_models={})
    finally:
        engine.dispose()
