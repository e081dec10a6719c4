"""Personal access tokens: generated once, stored as a SHA-256 digest, looked up by digest.

Tokens carry 160 random bits, so a fast digest is enough (no password-style stretching);
the plaintext exists only in the response that creates it.

Lifetimes (`expiry`): a token minted through the API lives at most
`max_token_lifetime_s` (a longer `lifetime_seconds` is refused, an absent one gets the
maximum), and never beyond the token that minted it: its expiry is capped at the minter's
(capped, not refused, since the minter's remaining life shrinks every second). Once minted,
a token is independent: revoking its minter does not revoke it. Only the bootstrap admin's
token, the installation's root credential, has no expiry imposed.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from control_plane.db.models import Principal, Token
from control_plane.errors import InvalidParameter
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


def expiry(
    now: datetime,
    lifetime_seconds: int | None,
    *,
    max_lifetime_s: int | None,
    minter_expires_at: datetime | None,
) -> datetime | None:
    """When a token minted now expires (None: never). `lifetime_seconds` None or <= 0 asks
    for the longest allowed; one above `max_lifetime_s` is a 400 naming the maximum. The
    result is capped at `minter_expires_at`, the expiry of the token that mints it."""
    lifetime = lifetime_seconds if lifetime_seconds and lifetime_seconds > 0 else None
    if max_lifetime_s is not None:
        if lifetime is not None and lifetime > max_lifetime_s:
            raise InvalidParameter(
                f"lifetime_seconds is {lifetime}; the maximum token lifetime here is "
                f"{max_lifetime_s} seconds"
            )
        lifetime = lifetime or max_lifetime_s
    expires = now + timedelta(seconds=lifetime) if lifetime else None
    if minter_expires_at is not None and (expires is None or expires > minter_expires_at):
        expires = minter_expires_at
    return expires


def minter_expiry(session: Session, token_id: str) -> datetime | None:
    """The expiry of the token a request came with (the bound of what it mints)."""
    token = session.get(Token, token_id)
    return None if token is None else token.expires_at


def issue_token(
    session: Session,
    principal: Principal,
    *,
    comment: str = "",
    lifetime_seconds: int | None = None,
    expires_at: datetime | None = None,
    created_by: tuple[int, str] | None = None,
    value: str | None = None,
) -> IssuedToken:
    """Store a new token for `principal` (flushes; the caller commits). It expires at
    `expires_at`, else after `lifetime_seconds`, else never; `created_by` is (id, name) of
    the principal that minted it when that is not `principal` itself."""
    value = value or generate_token()
    now = utcnow()
    if expires_at is None and lifetime_seconds:
        expires_at = now + timedelta(seconds=lifetime_seconds)
    record = Token(
        id=new_id(),
        principal_id=principal.id,
        token_hash=digest(value),
        comment=comment,
        created_at=now,
        expires_at=expires_at,
        revoked_at=None,
        created_by_id=created_by[0] if created_by else None,
        created_by_name=created_by[1] if created_by else None,
    )
    session.add(record)
    session.flush()
    return IssuedToken(value, record)


def revoke_all(session: Session, principal_id: int, now: datetime) -> int:
    """Revoke every live token of a principal (the caller commits); how many there were."""
    result = session.execute(
        update(Token)
        .where(Token.principal_id == principal_id, Token.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)


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
    if not principal.active:  # deactivated (its tokens were revoked too; this is belt and braces)
        return None
    return token, principal
