"""First start: an account, a default workspace and an admin with a token; on every start,
the shared (platform) endpoints declared in settings exist."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.auth.tokens import digest, issue_token
from control_plane.db.models import Account, Endpoint, Principal, Token, Workspace
from control_plane.endpoints.capacity import ChunkSize
from control_plane.endpoints.environment import EnvironmentPolicy
from control_plane.endpoints.schemas import EndpointCoreConfigInput, ServedEntityInput
from control_plane.endpoints.service import new_endpoint
from control_plane.endpoints.validation import CapacityCheck, check_endpoint_name, normalize_config
from control_plane.ids import new_id, new_workspace_id, to_millis, utcnow
from control_plane.registry import resolve
from control_plane.settings import Settings

log = logging.getLogger(__name__)


def bootstrap(
    session: Session, settings: Settings, check_capacity: CapacityCheck, chunk_size: ChunkSize
) -> str | None:
    """Returns the admin token when it was generated here (to be shown once), else None.
    The caller commits."""
    generated = None
    account = session.scalars(select(Account).order_by(Account.created_at)).first()
    if account is None:
        account, admin = _create_account(session, settings)
        if settings.admin_token is None:
            generated = issue_token(session, admin, comment="bootstrap admin token").value
    else:
        found = session.scalars(
            select(Principal)
            .where(Principal.is_account_admin.is_(True), Principal.kind == "user")
            .order_by(Principal.id)
        ).first()
        assert found is not None, "an account always has its bootstrap admin"
        admin = found
    if settings.admin_token is not None:
        value = settings.admin_token.get_secret_value()
        if session.scalars(select(Token).where(Token.token_hash == digest(value))).first() is None:
            issue_token(session, admin, comment="MOESERVE_ADMIN_TOKEN", value=value)
    _ensure_shared_endpoints(session, settings, account, admin, check_capacity, chunk_size)
    return generated


def _create_account(session: Session, settings: Settings) -> tuple[Account, Principal]:
    now = utcnow()
    account = Account(id=new_id(), name=settings.account_name, created_at=now)
    workspace = Workspace(
        id=new_workspace_id(), account_id=account.id, name=settings.workspace_name, created_at=now
    )
    admin = Principal(
        workspace_id=workspace.id,
        kind="user",
        name=settings.admin_user_name,
        is_workspace_admin=True,
        is_account_admin=True,
        created_at=now,
    )
    session.add_all([account, workspace])
    session.flush()
    session.add(admin)
    session.flush()
    log.info("created account %s, workspace %s, admin %s", account.name, workspace.id, admin.name)
    return account, admin


def _ensure_shared_endpoints(
    session: Session,
    settings: Settings,
    account: Account,
    admin: Principal,
    check_capacity: CapacityCheck,
    chunk_size: ChunkSize,
) -> None:
    for shared in settings.shared_endpoints:
        check_endpoint_name(shared.name, shared=True)
        exists = session.scalars(
            select(Endpoint).where(
                Endpoint.account_id == account.id,
                Endpoint.workspace_id.is_(None),
                Endpoint.name == shared.name,
            )
        ).first()
        if exists is not None:
            continue
        endpoint_id = new_id()
        now = utcnow()
        entity = ServedEntityInput(
            entity_name=shared.entity_name,
            entity_version=shared.entity_version,
            workload_size=shared.workload_size,
            scale_to_zero_enabled=shared.scale_to_zero_enabled,
        )
        config = normalize_config(
            EndpointCoreConfigInput(served_entities=[entity]),
            endpoint_id=endpoint_id,
            version=1,
            creator=admin.name,
            now_ms=to_millis(now) or 0,
            resolve_model=lambda name, version: resolve(
                session, None, name, version, system_models=settings.system_models
            ),
            check_capacity=check_capacity,
            check_environment=lambda env: EnvironmentPolicy(settings.environment).check(env, None),
            chunk_size=chunk_size,
            defaults=settings.workers,
        )
        session.add(
            new_endpoint(
                endpoint_id=endpoint_id,
                account_id=account.id,
                workspace_id=None,
                name=shared.name,
                creator=admin.name,
                pending_config=config,
                now=now,
                task=shared.task,
                description=f"Platform pay-per-token endpoint serving {shared.entity_name}",
            )
        )
        log.info("declared shared endpoint %s (%s)", shared.name, shared.entity_name)
