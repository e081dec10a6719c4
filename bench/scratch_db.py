"""Throwaway PostgreSQL databases for benchmarks and tests (127.0.0.1:5432, trust auth, as
docs/testing.md sets up): `scratch_postgres()` creates one and drops it afterwards;
`migrated_engine(url)` is an engine on it with moeserve's schema at head."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=2):
            return True
    except Exception:
        return False


@contextmanager
def scratch_postgres(prefix: str = "moeserve_scratch") -> Iterator[str]:
    """A new, empty database; yields its SQLAlchemy URL; dropped (connections and all)."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def migrated_engine(url: str) -> Iterator[Engine]:
    """An engine on `url` after the control plane's migrations (every table, billing too)."""
    from control_plane.db import build_engine, upgrade

    engine = build_engine(url)
    try:
        upgrade(engine)
        yield engine
    finally:
        engine.dispose()
