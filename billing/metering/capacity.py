"""Capacity metering: `capacity_timeline` intervals -> COMPUTE_TIME, LAUNCH and GPU_TIME
measures, from what was held, never from traffic.

- Provisioned throughput (`provisioned_chunks > 0`): chunks × seconds held, split at UTC hour
  boundaries (`pricing.split_by_hour`), priced `provisioned_dbu` at the throughput rate of the
  entity's model on the card in effect at each hour's start. usage_type COMPUTE_TIME,
  serving_type FOUNDATION_MODEL, the serving SKU.
- Every provisioned interval flagged `woke_from_zero` adds one launch (`launch_dbu`) to the
  LAUNCH SKU's COMPUTE_TIME record of the hour the interval started.
- A custom model (no chunks, and its family has no pay-per-token rates) on any workload type:
  replicas × seconds at `gpu_dbu_per_hour(workload_type)`, usage_type GPU_TIME, serving_type
  GPU_MODEL. The timeline records the replicas reserved, `max_replicas` (scale-to-zero
  shows up as parked intervals), so that is what is billed. Pay-per-token entities (no
  chunks, family with token rates) accrue nothing here: their tokens are billed instead.
- Parked intervals accrue nothing. An open interval (`ended_at` None) counts up to `now`.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from billing.metering.context import MeteringContext
from billing.metering.measures import (
    COMPUTE_TIME,
    FOUNDATION_MODEL,
    GPU_MODEL,
    GPU_TIME,
    Measure,
    Measures,
    RecordKey,
    add,
)
from billing.metering.timeline import Interval
from billing.pricing import gpu_dbu, provisioned_dbu, split_by_hour
from billing.ratecard import RateCard, UnknownRate
from billing.skus import sku_name


def measure_capacity(
    ctx: MeteringContext, intervals: list[Interval], start: datetime, end: datetime, now: datetime
) -> Measures:
    """Capacity measures of the hours in [start, end); intervals are clipped to
    [start, min(end, now))."""
    measures: Measures = {}
    for interval in intervals:
        if interval.parked:
            continue
        if interval.provisioned_chunks > 0:
            _provisioned(measures, ctx, interval, start, end, now)
        else:
            _gpu_time(measures, ctx, interval, start, end, now)
    return measures


def _clip(
    interval: Interval, start: datetime, end: datetime, now: datetime
) -> list[tuple[datetime, Decimal]]:
    held_from = max(interval.started_at, start)
    held_until = min(interval.ended_at or now, end, now)
    return split_by_hour(held_from, held_until) if held_from < held_until else []


def _key(
    ctx: MeteringContext,
    interval: Interval,
    usage_type: str,
    hour: datetime,
    *,
    launch: bool = False,
) -> RecordKey:
    return RecordKey(
        interval.account_id,
        interval.workspace_id,
        interval.endpoint_id,
        interval.served_entity_name,
        sku_name(ctx.tier, ctx.where(interval.workspace_id)[1], launch=launch),
        usage_type,
        hour,
    )


def _provisioned(
    measures: Measures,
    ctx: MeteringContext,
    interval: Interval,
    start: datetime,
    end: datetime,
    now: datetime,
) -> None:
    family = interval.model_family
    chunks = interval.provisioned_chunks
    for hour, seconds in _clip(interval, start, end, now):
        card = ctx.rate_cards.at(hour)
        rate = card.throughput(family, interval.entity_name, interval.entity_version)
        measure = Measure(
            endpoint_name=interval.endpoint_name,
            serving_type=FOUNDATION_MODEL,
            rate_card_version=card.version,
            usage_quantity=provisioned_dbu(chunks, seconds, rate),
            chunk_seconds=chunks * seconds,
        )
        add(measures, _key(ctx, interval, COMPUTE_TIME, hour), measure)
    woke_at = interval.started_at
    if interval.woke_from_zero and start <= woke_at < end and woke_at <= now:
        hour = woke_at.replace(minute=0, second=0, microsecond=0)
        card = ctx.rate_cards.at(hour)
        rate = card.throughput(family, interval.entity_name, interval.entity_version)
        launch = Measure(
            endpoint_name=interval.endpoint_name,
            serving_type=FOUNDATION_MODEL,
            rate_card_version=card.version,
            usage_quantity=rate.launch_dbu,
            launches=1,
        )
        add(measures, _key(ctx, interval, COMPUTE_TIME, hour, launch=True), launch)


def _token_priced(card: RateCard, family: str) -> bool:
    try:
        card.token_rates(family)
    except UnknownRate:
        return False
    return True


def _gpu_time(
    measures: Measures,
    ctx: MeteringContext,
    interval: Interval,
    start: datetime,
    end: datetime,
    now: datetime,
) -> None:
    family = interval.model_family
    replicas = interval.max_replicas
    for hour, seconds in _clip(interval, start, end, now):
        card = ctx.rate_cards.at(hour)
        if _token_priced(card, family):
            continue  # pay-per-token: billed by its tokens
        measure = Measure(
            endpoint_name=interval.endpoint_name,
            serving_type=GPU_MODEL,
            rate_card_version=card.version,
            usage_quantity=gpu_dbu(
                replicas, seconds, card.gpu_dbu_per_hour(interval.workload_type)
            ),
            chunk_seconds=replicas * seconds,
        )
        add(measures, _key(ctx, interval, GPU_TIME, hour), measure)
