"""Personal access tokens: generated once, stored as a SHA-256 digest, looked up by digest.

Tokens carry 160 random bits, so a fast digest is enough (no password-style stretching);
the plaintext exists only in the response that creates it.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.db.models import Principal, Token
from control_plane.ids import new_id, utcnow

TOKEN_PREFIX = "dapi"


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_hex(20)


def digest(token_value: str) -> str:
    return hashlib.sha256(token_value.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    value: str
    record: Token


def issue_token(
    session: Session,
    principal: Principal,
    *,
    comment: str = "",
    lifetime_seconds: int | None = None,
    value: str | None = None,
) -> IssuedToken:
    """Store a new token for `principal` (flushes; the caller commits)."""
    value = value or generate_token()
    now = utcnow()
    expires = now + timedelta(seconds=lifetime_seconds) if lifetime_seconds else None
    record = Token(
        id=new_id(),
        principal_id=principal.id,
        token_hash=digest(value),
        comment=comment,
        created_at=now,
        expires_at=expires,
        revoked_at=None,
    )
    session.add(record)
    session.flush()
    return IssuedToken(value, record)


def find_active_token(
    session: Session, value: str, now: datetime
) -> tuple[Token, Principal] | None:
    row = session.execute(
        select(Token, Principal)
        .join(Principal, Principal.id == Token.principal_id)
        .where(Token.token_hash == digest(value))
    ).first()
    if row is None:
        return None
    token, principal = row
    if token.revoked_at is not None or (token.expires_at is not None and token.expires_at <= now):
        return None
    return token, principal
