"""What the query path of one control-plane process holds: the lookup cache, the rate
limiter, the usage ledger, metrics, the replicas' handles and queues, and tokenizers.
Built in the app's lifespan (`Gateway.start`), closed on shutdown (pending usage rows are
flushed).

It also keeps the ledger's open requests (`_keep_checkpoints_forever`): from start, and then
every quarter of `gateway.usage_checkpoint_stale_s`, it refreshes this process's open rows
and settles the rows of dead processes (those not refreshed for the stale bound) as
interrupted requests, each from its last checkpoint (`billing.ledger.checkpoints`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from billing.ledger import UsageLedger
from control_plane.budgets.guard import BudgetGuard
from control_plane.db.models import Endpoint
from control_plane.endpoints.config import ServedEntity
from control_plane.endpoints.metrics import EndpointLabels
from control_plane.query.metrics import GatewayMetrics
from control_plane.query.ratelimit import build_rate_limiter
from control_plane.query.ratelimit.limiter import RateLimiter
from control_plane.query.replicas import Replicas
from control_plane.query.requests import Tokenizers
from control_plane.query.targets import QueryTargets
from control_plane.settings import Settings
from deploy.providers.base import AppStatus, Provider

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    settings: Settings
    sessions: sessionmaker[Session]
    provider: Provider
    targets: QueryTargets
    limiter: RateLimiter
    ledger: UsageLedger
    metrics: GatewayMetrics
    replicas: Replicas
    app_statuses: Callable[[], dict[str, AppStatus]]  # the reconciler's last view
    tokenizers: Tokenizers = field(default_factory=Tokenizers)
    budgets: BudgetGuard = field(default_factory=BudgetGuard)  # the plane's, once started
    _sampler: asyncio.Task[None] | None = None
    _sampled: set[tuple[EndpointLabels, str]] = field(default_factory=set)  # gauged entities
    _checkpoint_keeper: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls,
        settings: Settings,
        engine: Engine,
        sessions: sessionmaker[Session],
        provider: Provider,
        app_statuses: Callable[[], dict[str, AppStatus]],
    ) -> Gateway:
        metrics = GatewayMetrics()
        ledger = UsageLedger(
            engine,
            max_batch=settings.gateway.usage_batch_max,
            max_payload_bytes=settings.gateway.inference_table_max_bytes,
            checkpoint_tokens=settings.gateway.usage_checkpoint_tokens,
            checkpoint_interval_s=settings.gateway.usage_checkpoint_interval_s,
            reconnect_timeout_s=settings.gateway.usage_reconnect_timeout_s,
        )
        ledger.start()
        gateway = cls(
            settings=settings,
            sessions=sessions,
            provider=provider,
            targets=QueryTargets(sessions, settings.gateway.lookup_cache_ttl_s),
            limiter=build_rate_limiter(settings.redis_url, settings.ratelimit, metrics.registry),
            ledger=ledger,
            metrics=metrics,
            replicas=Replicas(provider, settings, metrics, app_statuses),
            app_statuses=app_statuses,
        )
        gateway._sampler = asyncio.create_task(gateway._sample_forever(), name="replica-stats")
        gateway._checkpoint_keeper = asyncio.create_task(
            gateway._keep_checkpoints_forever(), name="usage-checkpoints"
        )
        return gateway

    async def close(self) -> None:
        for task in (self._sampler, self._checkpoint_keeper):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.ledger.close()
        await self.limiter.close()

    # -- open requests: this process's kept fresh, dead processes' settled ----------------
    async def _keep_checkpoints_forever(self) -> None:
        stale_after = timedelta(seconds=self.settings.gateway.usage_checkpoint_stale_s)
        while True:
            await self.keep_checkpoints_once(stale_after)
            await asyncio.sleep(stale_after.total_seconds() / 4)

    async def keep_checkpoints_once(self, stale_after: timedelta) -> int:
        """Refresh this process's open requests, then settle the stale ones of dead
        processes; returns how many were settled. A failure is logged and left to the next
        pass (settlement is idempotent)."""
        self.ledger.heartbeat()
        try:
            settled = await self.ledger.settle_interrupted(stale_after)
        except Exception as error:  # the database is down: the next pass retries
            log.warning("settling interrupted requests failed (%s)", type(error).__name__)
            return 0
        if settled:
            log.warning(
                "settled %d requests a stopped process left open: billed from their last "
                "usage checkpoint (status 520)",
                settled,
            )
        return settled

    # -- replica statistics for /metrics ---------------------------------------------------
    async def _sample_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.gateway.stats_interval_s)
            try:
                await self.sample_once()
            except Exception:  # metrics must never take the query path down
                log.debug("sampling replica stats failed", exc_info=True)

    async def sample_once(self) -> None:
        entities = await asyncio.to_thread(self._live_entities)
        statuses = self.app_statuses()
        live = {(endpoint, entity.name) for endpoint, entity in entities}
        for endpoint, entity_name in self._sampled - live:  # a deleted endpoint's gauges go
            for gauge in (self.metrics.replicas, self.metrics.running_seqs, self.metrics.kv_usage):
                gauge.remove(*endpoint, entity_name)
        self._sampled = live
        for endpoint, entity in entities:
            labels = (*endpoint, entity.name)
            status = statuses.get(entity.app_name)
            running = status.running_replicas if status else 0
            self.metrics.replicas.labels(*labels).set(running)
            if not running:
                continue
            handle = await self.replicas.handle(entity)
            async with asyncio.timeout(self.settings.gateway.stats_interval_s):
                stats = await handle.stats.remote()
            self.metrics.running_seqs.labels(*labels).set(stats.get("in_flight_requests", 0))
            total = stats.get("kv_blocks_total") or 0
            if total:
                used = total - stats.get("kv_blocks_free", total)
                self.metrics.kv_usage.labels(*labels).set(used / total)

    def _live_entities(self) -> list[tuple[EndpointLabels, ServedEntity]]:
        """Each live served entity, with its endpoint's own labels (the replicas are
        the endpoint's, not any one tenant's)."""
        columns = Endpoint.workspace_id, Endpoint.id, Endpoint.name, Endpoint.config
        with self.sessions() as session:
            rows = session.execute(select(*columns)).all()
        return [
            (EndpointLabels.of(workspace, endpoint_id, name), entity)
            for workspace, endpoint_id, name, config in rows
            if config
            for entity in config.served_entities
        ]
