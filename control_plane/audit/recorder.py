"""Writing an audit event: one short transaction of its own, never the request's (which
may have been rolled back). A failed write is logged — the event's id, action and the
error's type, never its values — and swallowed: auditing never fails the request."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from control_plane.audit.events import AuditEvent
from control_plane.db.models import AuditRecord

log = logging.getLogger(__name__)


def record(sessions: sessionmaker[Session], event: AuditEvent) -> bool:
    """Whether `event` was stored."""
    try:
        with sessions() as session:
            session.add(AuditRecord(**event.model_dump()))
            session.commit()
    except Exception as exc:  # whatever went wrong, the request it describes is answered
        log.error(
            "audit event %s (%s, status %d) was not recorded: %s",
            event.event_id,
            event.action,
            event.status_code,
            type(exc).__name__,
        )
        return False
    return True
