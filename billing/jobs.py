"""The billing jobs of an installation: metering (closed hours into usage records, and with
Stripe meter events on, their events queued in the same transaction), closing a month into
invoices (queued for Stripe in invoice mode), and delivering the Stripe outbox. `BillingJobs`
runs them from the control plane's loop (`run_forever`) and from `moeserve billing
run|close`; every job is idempotent, so a failed pass is simply retried."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from billing.invoicing import Invoice, close_period
from billing.metering import MeteringContext, MeteringReport, run_metering
from billing.ratecard import RateCards
from billing.records import UsageRecord
from billing.settings import BillingSettings, Cloud
from billing.stripe_gateway import (
    DeliveryReport,
    StripeGateway,
    deliver_pending,
    enqueue_invoice,
    enqueue_meter_events,
)

log = logging.getLogger(__name__)


class BillingJobs:
    def __init__(
        self, engine: Engine, settings: BillingSettings, cloud: Cloud, rate_cards: RateCards
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.context = MeteringContext(
            cloud=cloud,
            region=settings.region_in(cloud),
            tier=settings.tier,
            rate_cards=rate_cards,
        )

    @property
    def _stripe_on(self) -> bool:
        return self.settings.stripe_api_key is not None

    def stripe(self) -> StripeGateway | None:
        key = self.settings.stripe_api_key
        if key is None:
            return None
        return StripeGateway(key.get_secret_value(), api_base=self.settings.stripe_api_base)

    def meter(self, now: datetime) -> MeteringReport:
        """Store the closed hours; with Stripe meter events on, each new record's event is
        queued in the transaction that stores the record (never one without the other)."""
        meter_events = self._stripe_on and self.settings.stripe_delivery == "meter_events"
        return run_metering(
            self.engine,
            self.context,
            now,
            on_stored=_queue_meter_events if meter_events else None,
        )

    def close_month(self, period: str, now: datetime) -> list[Invoice]:
        """Invoices of `period` (YYYY-MM); with Stripe in invoice mode they are queued for it
        in the transaction that writes them."""
        invoices_to_stripe = self._stripe_on and self.settings.stripe_delivery == "invoices"
        context = self.context
        return close_period(
            self.engine,
            period,
            context.rate_cards,
            context.cloud,
            context.region,
            context.tier,
            now,
            on_invoice=enqueue_invoice if invoices_to_stripe else None,
        )

    def deliver(self, now: datetime, gateway: StripeGateway) -> DeliveryReport:
        return deliver_pending(self.engine, gateway, now)

    async def run_forever(self, clock: Callable[[], datetime]) -> None:
        """Meter (and deliver to Stripe) every `metering_interval_s`; a failed pass is logged
        and retried next time."""
        gateway = self.stripe()
        interval = self.settings.metering_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                report = await asyncio.to_thread(self.meter, clock())
                if report.written:
                    log.info("metering wrote %s records", report.written)
                if gateway is not None:
                    delivered = await asyncio.to_thread(self.deliver, clock(), gateway)
                    log.debug("stripe delivery: %s", delivered)
            except Exception:
                log.exception("billing pass failed; retrying in %s s", interval)


def _queue_meter_events(
    connection: Connection, records: list[dict[str, Any]], now: datetime
) -> None:
    with Session(bind=connection) as session:  # joins the metering run's transaction
        enqueue_meter_events(session, [UsageRecord(**values) for values in records], now)
        session.flush()
