"""The control plane's side of billing: the metering context (this installation's cloud,
region and tier, the rate cards, and model families from the registry), the periodic jobs
(metering, Stripe delivery) and the CLI's `moeserve billing run|close`."""

from __future__ import annotations

import asyncio
import functools
import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from billing.invoicing import Invoice, close_period
from billing.metering import MeteringContext, MeteringReport, run_metering
from billing.ratecard import RateCards
from billing.records import UsageRecord
from billing.stripe_gateway import (
    DeliveryReport,
    StripeGateway,
    deliver_pending,
    enqueue_invoice,
    enqueue_meter_events,
)
from control_plane.db.models import Endpoint, RegisteredModel
from control_plane.ids import utcnow
from control_plane.registry import builtin_models
from control_plane.settings import Settings

log = logging.getLogger(__name__)
METER_EVENT_LOOKBACK = timedelta(days=1)  # records offered to the Stripe outbox each pass


def metering_context(
    settings: Settings, rate_cards: RateCards, sessions: sessionmaker[Session]
) -> MeteringContext:
    def family_of(entity_name: str, entity_version: str | None) -> str:
        for model in builtin_models():
            if model.name == entity_name:
                return model.family
        with sessions() as session:
            query = select(RegisteredModel.model_type).where(RegisteredModel.name == entity_name)
            if entity_version is not None:
                query = query.where(RegisteredModel.version == entity_version)
            family = session.scalars(query).first()
        if family is None:
            raise LookupError(f"model {entity_name!r} version {entity_version!r} is unknown")
        return family

    @functools.lru_cache(maxsize=1024)  # one context per pass or request: tags read once each
    def tags_of(endpoint_id: str) -> dict[str, str]:
        with sessions() as session:
            endpoint = session.get(Endpoint, endpoint_id)
            tags = endpoint.tags if endpoint is not None else []
        return {tag.key: tag.value or "" for tag in tags}

    return MeteringContext(
        cloud=settings.cloud,
        region=settings.billing_region(),
        tier=settings.billing.tier,
        rate_cards=rate_cards,
        family_of=family_of,
        tags_of=tags_of,
    )


def stripe_gateway(settings: Settings) -> StripeGateway | None:
    key = settings.billing.stripe_api_key
    if key is None:
        return None
    return StripeGateway(key.get_secret_value(), api_base=settings.billing.stripe_api_base)


def meter_now(
    settings: Settings, rate_cards: RateCards, sessions: sessionmaker[Session], now: datetime
) -> MeteringReport:
    """Store the closed hours; with Stripe meter events on, queue one per stored record
    (idempotent: the outbox keys events by record id, so recent records are offered again
    each pass and only new ones are queued)."""
    engine = sessions.kw["bind"]
    report = run_metering(engine, metering_context(settings, rate_cards, sessions), now)
    billing = settings.billing
    if billing.stripe_api_key is not None and billing.stripe_delivery == "meter_events":
        with sessions() as session:
            recent = session.scalars(
                select(UsageRecord).where(UsageRecord.created_at >= now - METER_EVENT_LOOKBACK)
            ).all()
            enqueue_meter_events(session, recent, now)
            session.commit()
    return report


def close_month(
    settings: Settings,
    rate_cards: RateCards,
    sessions: sessionmaker[Session],
    period: str,
    now: datetime,
) -> list[Invoice]:
    """Invoices of `period` (YYYY-MM); with Stripe in invoice mode they are queued for it."""
    invoices_to_stripe = (
        settings.billing.stripe_api_key is not None
        and settings.billing.stripe_delivery == "invoices"
    )
    return close_period(
        sessions.kw["bind"],
        period,
        rate_cards,
        settings.cloud,
        settings.billing_region(),
        settings.billing.tier,
        now,
        on_invoice=enqueue_invoice if invoices_to_stripe else None,
    )


async def billing_loop(
    settings: Settings, rate_cards: RateCards, sessions: sessionmaker[Session]
) -> None:
    """Meter (and deliver to Stripe) every `metering_interval_s`; a failed pass is logged
    and retried next time — the jobs are idempotent."""
    gateway = stripe_gateway(settings)
    while True:
        await asyncio.sleep(settings.billing.metering_interval_s)
        try:
            report: Any = await asyncio.to_thread(
                meter_now, settings, rate_cards, sessions, utcnow()
            )
            if report.written:
                log.info("metering wrote %s records", report.written)
            if gateway is not None:
                delivered: DeliveryReport = await asyncio.to_thread(
                    deliver_pending, sessions.kw["bind"], gateway, utcnow()
                )
                log.debug("stripe delivery: %s", delivered)
        except Exception:
            log.exception(
                "billing pass failed; retrying in %s s", settings.billing.metering_interval_s
            )
