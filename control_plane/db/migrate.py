"""Apply Alembic migrations on start (`upgrade head`), safely from several processes."""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

MIGRATIONS = Path(__file__).parent / "migrations"
# Any fixed 64-bit number: PostgreSQL advisory lock that serialises concurrent upgrades.
_MIGRATION_LOCK = 0x6D6F657365727665


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at (None: no schema yet)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        revision: str | None = MigrationContext.configure(connection).get_current_revision()
        return revision


def upgrade(engine: Engine) -> None:
    if engine.dialect.name == "sqlite":
        url = engine.url.database
        if url and url != ":memory:":
            _private_sqlite_file(Path(url))
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK})
            connection.commit()
        try:
            config = alembic_config(engine)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            connection.commit()
        finally:
            if engine.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK}
                )
                connection.commit()


def _private_sqlite_file(path: Path) -> None:
    """The SQLite file holds prompts (inference tables), usage and token digests: readable
    by the server's user only (0600; SQLite gives its -wal and -shm files the same mode),
    in a directory made 0700 when moeserve creates it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chmod(path, 0o600)  # a file made by an earlier version, under a laxer umask
