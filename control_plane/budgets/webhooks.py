"""Budget webhooks: where they may go, how they are signed, and their delivery from the
outbox (`webhook_deliveries`): each due row is claimed (a conditional UPDATE, so two control
planes never send it at once), POSTed with its signature, and marked delivered on a 2xx or
retried with backoff (1 s doubling to 5 min) otherwise."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import socket
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import httpx
from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from control_plane.budgets.settings import BudgetSettings
from control_plane.db.models import WebhookDelivery

log = logging.getLogger(__name__)
CLAIM = timedelta(seconds=60)
MAX_BACKOFF_S = 300
BATCH = 50


class TargetRefused(ValueError):
    """A webhook target moeserve will not call; the message says why."""


def check_target(url: str, settings: BudgetSettings) -> None:
    """Refuse what is not an absolute http(s) URL without credentials, or (unless allowed)
    one whose host resolves to a loopback, private, link-local or reserved address."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise TargetRefused(f"webhook target {url!r} must be an absolute https:// URL")
    if parts.username or parts.password:
        raise TargetRefused("webhook target must not carry credentials; sign-check instead")
    if settings.webhook_private_targets:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise TargetRefused(f"webhook target host {parts.hostname!r} does not resolve") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise TargetRefused(
                f"webhook target host {parts.hostname!r} resolves to a non-public address "
                f"({address}); an operator may allow that with budgets.webhook_private_targets"
            )


def signature(secret: str, timestamp: int, body: str) -> str:
    """The X-Moeserve-Signature header: `t=<unix time>,v1=<hex HMAC-SHA256 of 't.body'>`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def deliver_due(sessions: sessionmaker[Session], settings: BudgetSettings, now: datetime) -> int:
    """Send every due delivery this process can claim; how many were delivered."""
    secret = settings.webhook_signing_secret
    if secret is None:
        return 0
    with sessions() as session:
        due = session.scalars(
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.delivered_at.is_(None),
                WebhookDelivery.next_attempt_at <= now,
                or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now),
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(BATCH)
        ).all()
    delivered = 0
    for delivery_id in due:
        row = _claim(sessions, delivery_id, now)
        if row is not None:
            delivered += _send(sessions, row, secret.get_secret_value(), settings, now)
    return delivered


def _claim(
    sessions: sessionmaker[Session], delivery_id: str, now: datetime
) -> WebhookDelivery | None:
    with sessions() as session:
        result = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.delivered_at.is_(None),
                or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now),
            )
            .values(claimed_until=now + CLAIM)
        )
        assert isinstance(result, CursorResult)
        session.commit()
        if result.rowcount != 1:
            return None  # another control plane has it
        row = session.get(WebhookDelivery, delivery_id)
        if row is not None:
            session.expunge(row)
        return row


def _send(
    sessions: sessionmaker[Session],
    row: WebhookDelivery,
    secret: str,
    settings: BudgetSettings,
    now: datetime,
) -> int:
    timestamp = int(now.timestamp())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "moeserve-budgets/1",
        "X-Moeserve-Delivery": row.id,
        "X-Moeserve-Signature": signature(secret, timestamp, row.body),
    }
    error: str | None = None
    kind = ""  # for the log: never the target's own words
    try:
        check_target(row.url, settings)  # again: what a name resolves to can change
        answer = httpx.post(
            row.url, content=row.body, headers=headers, timeout=settings.webhook_timeout_s
        )
        if not answer.is_success:
            error = kind = f"HTTP {answer.status_code}"
    except (httpx.HTTPError, ValueError) as exc:
        error, kind = f"{type(exc).__name__}: {exc}"[:500], type(exc).__name__
    with sessions() as session:
        stored = session.get(WebhookDelivery, row.id)
        if stored is None:
            return 0
        stored.attempts += 1
        stored.claimed_until = None
        if error is None:
            stored.delivered_at = now
        else:
            backoff = min(2 ** (stored.attempts - 1), MAX_BACKOFF_S)
            stored.next_attempt_at = now + timedelta(seconds=backoff)
            stored.last_error = error
            log.warning("budget webhook %s failed (attempt %d): %s", row.id, stored.attempts, kind)
        session.commit()
    return 1 if error is None else 0
