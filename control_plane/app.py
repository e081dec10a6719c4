"""`create_app(settings)`: the FastAPI application and its lifespan.

Start-up order: migrations, the provider (local Ray or an attached cluster), bootstrap
(account, admin, shared endpoints), the reconciler loop. Shutdown reverses it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

from fastapi import APIRouter, FastAPI
from sqlalchemy.exc import IntegrityError

from billing.jobs import BillingJobs
from billing.ratecard import load_rate_cards
from control_plane.api import (
    audit,
    budgets,
    dashboard,
    discovery,
    endpoint_details,
    endpoints,
    health,
    inference_log,
    models,
    permissions,
    prometheus,
    scim,
    token_management,
    tokens,
    workspaces,
)
from control_plane.audit.middleware import AuditTrail
from control_plane.audit.recorder import record as record_audit_event
from control_plane.billing_api import endpoint_stats as billing_endpoint_stats
from control_plane.billing_api import estimate as billing_estimate
from control_plane.billing_api import invoices as billing_invoices
from control_plane.billing_api import records as billing_records
from control_plane.billing_api import summary as billing_summary
from control_plane.billing_api import usage as billing_usage
from control_plane.billing_api import viewer as billing_viewer
from control_plane.bootstrap import bootstrap
from control_plane.budgets.jobs import BudgetJobs
from control_plane.db import build_engine, session_factory, upgrade
from control_plane.errors import UnhandledErrors, install_error_handlers
from control_plane.ids import utcnow
from control_plane.process_env import reclaim_shutdown_signals
from control_plane.query import routes as query_routes
from control_plane.query.gateway import Gateway
from control_plane.reconciler import Reconciler
from control_plane.settings import Settings
from control_plane.state import ControlPlane
from deploy.providers.base import Provider

log = logging.getLogger(__name__)

ProviderFactory = Callable[[Settings], Provider]


def local_provider(settings: Settings) -> Provider:
    """The Ray cluster (local, or the one at `ray_address`); with clouds configured, wrapped
    so cloud workspaces' endpoints bring their own node groups."""
    from deploy.providers.local import LocalRayProvider

    cluster = LocalRayProvider(address=settings.ray_address, num_cpus=settings.ray_num_cpus)
    if not settings.clouds.configured():
        return cluster
    return cloud_provider(settings, cluster)


def cloud_provider(settings: Settings, cluster: Provider) -> Provider:
    from deploy.providers.cloud import CloudOptions, CloudProvider

    clouds = settings.clouds
    return CloudProvider(
        cluster,
        clouds.node_groups(),
        CloudOptions(
            installation_id=clouds.installation_id,
            worker_image=clouds.worker_image,
            head_address=clouds.head_address or _attached_gcs_address,
            sync_interval_s=clouds.sync_interval_s,
            ray_auth_token=clouds.ray_auth_token,
            # After a restart, the endpoints' leases move here within a lease's life; their
            # apps are deployed at the next tick, onto the groups they already have.
            release_after_s=2 * (settings.lease_ttl_s + settings.reconcile_interval_s),
        ),
    )


def _attached_gcs_address() -> str:
    import ray

    return str(ray.get_runtime_context().gcs_address)


def create_app(settings: Settings, provider_factory: ProviderFactory | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        plane = await asyncio.to_thread(_start, settings, provider_factory or local_provider)
        reclaim_shutdown_signals()  # Ray just took SIGTERM: let it drain, as SIGINT does
        app.state.plane = plane
        plane.gateway = await Gateway.start(
            settings, plane.engine, plane.sessions, plane.provider, lambda: plane.reconciler.apps
        )
        plane.gateway.budgets = plane.budgets.guard
        if settings.billing.run_metering:
            plane.tasks.append(
                asyncio.create_task(plane.billing.run_forever(utcnow), name="billing")
            )
        plane.tasks.append(asyncio.create_task(plane.budgets.run_forever(utcnow), name="budgets"))
        if settings.run_reconciler:
            plane.tasks.append(asyncio.create_task(plane.reconciler.run(), name="reconciler"))
        try:
            yield
        finally:
            for task in plane.tasks:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
            if plane.gateway is not None:
                await plane.gateway.close()  # flushes usage rows still queued
            await asyncio.to_thread(_stop, plane)

    app = FastAPI(
        title="moeserve",
        summary="Databricks-compatible model serving for Mixture-of-Experts LLMs",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(query_routes.QueryDoor)  # the query routes' fast path
    # Outside the door; only requests under /api/2.0/ (never a query) stop at the trail.
    app.add_middleware(
        AuditTrail, write=lambda event: record_audit_event(app.state.plane.sessions, event)
    )
    # Added last, so it wraps every layer and route of ours: an unexpected error is a JSON
    # 500 that leaves the client's connection open.
    app.add_middleware(UnhandledErrors)
    for router in routers():
        app.include_router(router)
    return app


def routers() -> list[APIRouter]:
    # Routes are matched in order. The query routes first: no other path starts with
    # /serving-endpoints (their POSTs rarely get here: `QueryDoor` answers them before
    # FastAPI routes). endpoint_details before endpoints: its fixed paths must win over
    # `/{name}` patterns.
    return [
        query_routes.router,
        endpoint_details.router,
        inference_log.router,
        endpoints.router,
        permissions.router,
        workspaces.router,
        tokens.router,
        token_management.router,
        scim.router,
        models.router,
        billing_usage.router,
        billing_records.router,
        billing_invoices.router,
        billing_estimate.router,
        billing_summary.router,
        billing_endpoint_stats.router,
        billing_viewer.router,
        dashboard.router,
        budgets.router,
        audit.router,
        discovery.router,
        health.router,
        prometheus.router,
    ]


def _start(settings: Settings, provider_factory: ProviderFactory) -> ControlPlane:
    engine = build_engine(settings.resolved_database_url())
    log.info("applying database migrations")
    upgrade(engine)
    rate_cards = load_rate_cards(settings.billing.rate_card_dir)
    provider = provider_factory(settings)
    log.info("connecting to Ray (%s)", settings.ray_address or "local")
    provider.start()
    sessions = session_factory(engine)
    billing = BillingJobs(engine, settings.billing, settings.cloud, rate_cards)
    plane = ControlPlane(
        settings=settings,
        engine=engine,
        sessions=sessions,
        provider=provider,
        reconciler=Reconciler(sessions, provider, settings),
        rate_cards=rate_cards,
        billing=billing,
        budgets=BudgetJobs(
            sessions, settings.budgets, billing.context, rate_cards, settings.billing.tier
        ),
    )
    for attempt in range(2):  # two processes bootstrapping one database: the loser re-reads
        with sessions() as session:
            try:
                plane.generated_admin_token = bootstrap(
                    session, settings, plane.check_capacity, plane.chunk_size
                )
                session.commit()
                break
            except IntegrityError:
                session.rollback()
                if attempt:
                    raise
    return plane


def _stop(plane: ControlPlane) -> None:
    plane.provider.stop()
    plane.engine.dispose()
