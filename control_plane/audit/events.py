"""One audit event, as recorded and as listed: who (`Actor` kind, principal, workspace,
the token it used), what (`action`, from `actions.AuditAction`), the target (identifiers
from the route, see `targets`), when (UTC), the source address, and the result."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class AuditResult(StrEnum):
    SUCCEEDED = "SUCCEEDED"
    DENIED = "DENIED"  # 401, 403, or 404 (what a caller may not see does not exist for it)
    FAILED = "FAILED"  # any other error: invalid input, conflicts, server errors


class Actor(StrEnum):
    """Who acted: a principal, or nobody the server could identify (a failed
    authentication, or a Stripe webhook, which proves itself by signature instead)."""

    USER = "user"
    SERVICE_PRINCIPAL = "service_principal"
    UNKNOWN = "unknown"
    SYSTEM = "system"  # moeserve itself (e.g. a budget threshold crossed)


DENIED_STATUSES = frozenset({401, 403, 404})


def result_of(status_code: int) -> AuditResult:
    if status_code < 400:
        return AuditResult.SUCCEEDED
    if status_code in DENIED_STATUSES:
        return AuditResult.DENIED
    return AuditResult.FAILED


class AuditEvent(BaseModel):
    """One audited request. Optional fields are left out of answers when empty."""

    model_config = ConfigDict(from_attributes=True)

    event_id: str = Field(description="unique id of the event (32 hex digits)")
    event_time: datetime = Field(description="when the request was answered, UTC")
    account_id: str | None = Field(default=None, description="the caller's account")
    workspace_id: str | None = Field(
        default=None, description="the caller's workspace; absent when the caller is unknown"
    )
    actor: Actor = Field(description="user, service_principal, or unknown")
    user_name: str | None = Field(
        default=None,
        description="the principal's name (a service principal's application id); "
        "absent when the caller is unknown",
    )
    principal_id: int | None = Field(default=None, description="the principal's SCIM id")
    token_id: str | None = Field(
        default=None, description="id (never the value) of the token the request came with"
    )
    action: str = Field(description="`<service>.<action>`, e.g. serving-endpoints.create")
    target: dict[str, str] = Field(
        description="what the action named: identifiers such as an endpoint's name or a "
        "token's id; never request bodies, token values or environment variable values"
    )
    source_ip_address: str | None = Field(
        default=None, description="the client's address as the server saw it"
    )
    status_code: int = Field(description="the HTTP status the request was answered with")
    result: AuditResult
    error_code: str | None = Field(
        default=None, description="the answer's error_code, for requests that failed"
    )
