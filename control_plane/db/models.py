"""The control plane's tables: tenancy, tokens, the model registry, endpoints and their
permissions. An endpoint's documents (config, state, AI gateway, tags) are stored through
typed columns that read back as the pydantic models of `control_plane.endpoints`. Alembic
(`control_plane/db/migrations`) owns the schema; these are its source. Billing's tables
(usage ledger, capacity timeline, records, invoices) live in `billing`. The audit log
(`AuditRecord`) is written by `control_plane.audit`."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column

from control_plane.audit.events import Actor, AuditResult
from control_plane.budgets.config import StoredBudget
from control_plane.db.base import Base, Id, Name, Timestamp
from control_plane.endpoints.ai_gateway import AiGatewayConfig, RateLimit
from control_plane.endpoints.config import EndpointConfig, EndpointTag, Task
from control_plane.endpoints.states import ConfigUpdate, Deployments, Ready
from persistence.columns import EnumText, PydanticJson, UtcDateTime


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[Id]
    name: Mapped[Name]
    created_at: Mapped[Timestamp]


class Workspace(Base):
    __tablename__ = "workspaces"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    name: Mapped[Name]
    created_at: Mapped[Timestamp]
    # Where its endpoints run and which SKUs it is billed under; NULL: the installation's
    # `cloud` and `billing.region` (control_plane.placement.workspace_placement).
    cloud: Mapped[str | None] = mapped_column(String(16), nullable=True)
    region: Mapped[str | None] = mapped_column(String(32), nullable=True)

    __table_args__ = (UniqueConstraint("account_id", "name"),)


class Principal(Base):
    """A user, service principal or group of one workspace."""

    __tablename__ = "principals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"))
    kind: Mapped[str] = mapped_column(String(32))  # user | service_principal | group
    name: Mapped[Name]
    is_workspace_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    is_account_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    # False once deactivated (SCIM `active`): its tokens are revoked and it cannot sign in.
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # Set when deleted: the row stays as a tombstone (kind `deleted:<id>`, name free again)
    # so its revoked tokens keep their owner and its id is never reused.
    deleted_at: Mapped[datetime | None]
    created_at: Mapped[Timestamp]

    __table_args__ = (UniqueConstraint("workspace_id", "kind", "name"),)


class GroupMember(Base):
    __tablename__ = "group_members"

    group_id: Mapped[int] = mapped_column(
        ForeignKey("principals.id", ondelete="CASCADE"), primary_key=True
    )
    member_id: Mapped[int] = mapped_column(
        ForeignKey("principals.id", ondelete="CASCADE"), primary_key=True
    )


class Token(Base):
    """A personal access token: only its SHA-256 digest is stored."""

    __tablename__ = "tokens"

    id: Mapped[Id]
    principal_id: Mapped[int] = mapped_column(ForeignKey("principals.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    comment: Mapped[str] = mapped_column(String(1024), default="")
    created_at: Mapped[Timestamp]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    # Who minted it (an admin, for a principal's initial or on-behalf-of token); kept as
    # plain values so the record outlives that principal. None: minted by its owner.
    created_by_id: Mapped[int | None] = mapped_column(Integer)
    created_by_name: Mapped[str | None] = mapped_column(String(255))


class RegisteredModel(Base):
    __tablename__ = "registered_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"))
    name: Mapped[Name]
    version: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(4096))
    model_type: Mapped[str] = mapped_column(String(32))
    creator: Mapped[Name]
    created_at: Mapped[Timestamp]

    __table_args__ = (UniqueConstraint("workspace_id", "name", "version"),)


class ModelSource(Base):
    """A checkpoint directory some workspace registered (its resolved path), and that
    workspace: the first to register it owns it, and with it everything below it. Other
    workspaces may register it, or a directory above or below it, only once an account
    admin has shared it with them (`ModelSourceShare`)."""

    __tablename__ = "model_sources"

    # SHA-256 of `path`: paths run to 4,096 characters, too long for a B-tree key.
    path_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(String(4096))
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"))
    created_at: Mapped[Timestamp]


class ModelSourceShare(Base):
    __tablename__ = "model_source_shares"

    path_key: Mapped[str] = mapped_column(
        ForeignKey("model_sources.path_key", ondelete="CASCADE"), primary_key=True
    )
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"), primary_key=True)
    created_at: Mapped[Timestamp]


class Endpoint(Base):
    """Desired config (`config`, `pending_config` while an update rolls) and the state the
    reconciler last observed. Shared endpoints have no workspace."""

    __tablename__ = "endpoints"

    id: Mapped[Id]
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    workspace_id: Mapped[str | None] = mapped_column(ForeignKey("workspaces.id"))
    name: Mapped[str] = mapped_column(String(63))
    creator: Mapped[Name]
    description: Mapped[str] = mapped_column(String(4096), default="")
    task: Mapped[Task] = mapped_column(EnumText(Task, 64))
    route_optimized: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[Timestamp]
    updated_at: Mapped[Timestamp]
    config_version: Mapped[int] = mapped_column(Integer, default=0)
    config: Mapped[EndpointConfig | None] = mapped_column(PydanticJson(EndpointConfig))
    pending_config: Mapped[EndpointConfig | None] = mapped_column(PydanticJson(EndpointConfig))
    update_started_at: Mapped[datetime | None]
    ready: Mapped[Ready] = mapped_column(EnumText(Ready, 16), default=Ready.NOT_READY)
    config_update: Mapped[ConfigUpdate] = mapped_column(
        EnumText(ConfigUpdate, 32), default=ConfigUpdate.IN_PROGRESS
    )
    deployments: Mapped[Deployments] = mapped_column(PydanticJson(Deployments), default=Deployments)
    ai_gateway: Mapped[AiGatewayConfig | None] = mapped_column(PydanticJson(AiGatewayConfig))
    rate_limits: Mapped[list[RateLimit] | None] = mapped_column(PydanticJson(list[RateLimit]))
    tags: Mapped[list[EndpointTag]] = mapped_column(PydanticJson(list[EndpointTag]), default=list)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    # Bumped by every write of what the reconciler plans from (config, pending_config,
    # config_update, update_started_at, deployments): a config update and each stored
    # reconcile outcome. The reconciler stores an outcome only while the generation it
    # planned from is current (control_plane.reconciler.loop); tags, AI gateway and rate
    # limits leave it alone.
    generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    __table_args__ = (
        UniqueConstraint("account_id", "workspace_id", "name"),
        Index("ix_endpoints_name", "name"),
    )


class EndpointPermission(Base):
    __tablename__ = "endpoint_permissions"

    endpoint_id: Mapped[str] = mapped_column(
        ForeignKey("endpoints.id", ondelete="CASCADE"), primary_key=True
    )
    principal_id: Mapped[int] = mapped_column(
        ForeignKey("principals.id", ondelete="CASCADE"), primary_key=True
    )
    level: Mapped[str] = mapped_column(String(16))  # CAN_MANAGE | CAN_QUERY | CAN_VIEW


class AuditRecord(Base):
    """One audited request (`control_plane.audit.events.AuditEvent`). No foreign keys:
    the record outlives the principal, token, endpoint or workspace it names."""

    __tablename__ = "audit_log"

    event_id: Mapped[Id]
    event_time: Mapped[Timestamp]
    account_id: Mapped[str | None] = mapped_column(String(32))
    workspace_id: Mapped[str | None] = mapped_column(String(32))
    actor: Mapped[Actor] = mapped_column(EnumText(Actor, 32))
    user_name: Mapped[str | None] = mapped_column(String(255))
    principal_id: Mapped[int | None] = mapped_column(Integer)
    token_id: Mapped[str | None] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(96))
    target: Mapped[dict[str, str]] = mapped_column(JSON)
    source_ip_address: Mapped[str | None] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    result: Mapped[AuditResult] = mapped_column(EnumText(AuditResult, 16))
    error_code: Mapped[str | None] = mapped_column(String(64))

    # The listing: one workspace's events, newest first (keyset on time, then id).
    __table_args__ = (
        Index("ix_audit_log_workspace_time", "workspace_id", "event_time", "event_id"),
    )


class Budget(Base):
    """An account's budget (`control_plane.budgets`): its filter and alert thresholds."""

    __tablename__ = "budgets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # a UUID, as Databricks'
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    display_name: Mapped[str] = mapped_column(String(128))
    config: Mapped[StoredBudget] = mapped_column(PydanticJson(StoredBudget))
    created_at: Mapped[Timestamp]
    updated_at: Mapped[Timestamp]


class BudgetCrossing(Base):
    """A threshold crossed in one period: written once (its key is unique), in the same
    transaction as its webhook deliveries, so each crossing notifies exactly once."""

    __tablename__ = "budget_crossings"

    alert_configuration_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(UtcDateTime(), primary_key=True)
    threshold: Mapped[str] = mapped_column(String(32), primary_key=True)
    budget_id: Mapped[str] = mapped_column(String(36), index=True)
    spend: Mapped[str] = mapped_column(String(40))
    crossed_at: Mapped[Timestamp]


class WebhookDelivery(Base):
    """One signed POST to send (an outbox row): retried with backoff until the receiver
    answers 2xx; `claimed_until` keeps two control planes from sending it at once."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[Id]
    budget_id: Mapped[str] = mapped_column(String(36))
    url: Mapped[str] = mapped_column(String(2048))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[Timestamp]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[Timestamp]
    claimed_until: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(512), nullable=True)

    __table_args__ = (Index("ix_webhook_deliveries_due", "delivered_at", "next_attempt_at"),)
