"""Persistence: SQLAlchemy 2.0 models (`models`), engine/session builders (`session`) and
Alembic migrations applied on start (`migrate.upgrade`). SQLite by default, PostgreSQL in
production; the same models and migrations serve both."""

from control_plane.db.migrate import upgrade
from control_plane.db.session import build_engine, session_factory

__all__ = ["build_engine", "session_factory", "upgrade"]
