"""What the query path of one control-plane process holds: the lookup cache, the rate
limiter, the usage ledger, metrics, the replicas' handles and queues, and tokenizers.
Built in the app's lifespan (`Gateway.start`), closed on shutdown (pending usage rows are
flushed)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from billing.ledger import UsageLedger
from control_plane.db.models import Endpoint
from control_plane.endpoints.config import ServedEntity
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
    _sampler: asyncio.Task[None] | None = None

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
        )
        ledger.start()
        gateway = cls(
            settings=settings,
            sessions=sessions,
            provider=provider,
            targets=QueryTargets(sessions, settings.gateway.lookup_cache_ttl_s),
            limiter=build_rate_limiter(settings.redis_url),
            ledger=ledger,
            metrics=metrics,
            replicas=Replicas(provider, settings, metrics, app_statuses),
            app_statuses=app_statuses,
        )
        gateway._sampler = asyncio.create_task(gateway._sample_forever(), name="replica-stats")
        return gateway

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
        await self.ledger.close()
        await self.limiter.close()

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
        for endpoint_name, entity in entities:
            labels = (endpoint_name, entity.name)
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

    def _live_entities(self) -> list[tuple[str, ServedEntity]]:
        with self.sessions() as session:
            rows = session.execute(select(Endpoint.name, Endpoint.config)).all()
        return [
            (name, entity) for name, config in rows if config for entity in config.served_entities
        ]
