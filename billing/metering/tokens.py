"""Pay-per-token metering: `endpoint_usage` rows -> TOKEN measures per (account, workspace,
endpoint, served entity, SKU, hour).

The aggregation runs in the database (one GROUP BY over an hour-truncation expression, see
`hours.sql_hour`), so a million rows cost one scan, not a million Python objects. Rules:
- Every row with input or output tokens counts, whatever its status code: the engine's counts
  are what was computed, and they are billed.
- A row served while its served entity held provisioned throughput (an unparked capacity
  interval with `provisioned_chunks > 0` covering `request_time`) is not billed per token:
  that entity is billed per chunk-hour, whatever its traffic (`capacity.py`).
- Each row names its model family (the gateway wrote it); a family without pay-per-token
  rates on the hour's rate card is a custom model billed by GPU time; its rows are skipped
  here.
- The workspace is the row's (the caller's workspace, also on account-shared endpoints).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, exists, func, or_, select

from billing.capacity import CapacityInterval
from billing.ledger.models import EndpointUsage
from billing.metering.context import MeteringContext
from billing.metering.hours import sql_hour
from billing.metering.measures import FOUNDATION_MODEL, TOKEN, Measure, Measures, RecordKey, add
from billing.pricing import token_dbu
from billing.ratecard import UnknownRate
from billing.skus import sku_name


def measure_tokens(
    connection: Connection,
    ctx: MeteringContext,
    start: datetime,
    end: datetime,
) -> Measures:
    """TOKEN measures of the hours in [start, end) (both hour boundaries)."""
    usage = EndpointUsage.__table__
    capacity = CapacityInterval.__table__
    hour = sql_hour(usage.c.request_time, connection.dialect.name).label("hour")
    provisioned = exists().where(
        capacity.c.endpoint_id == usage.c.endpoint_id,
        capacity.c.served_entity_name == usage.c.served_entity_id,
        capacity.c.provisioned_chunks > 0,
        capacity.c.parked.is_(False),
        capacity.c.started_at <= usage.c.request_time,
        or_(capacity.c.ended_at.is_(None), capacity.c.ended_at > usage.c.request_time),
    )
    query = (
        select(
            usage.c.account_id,
            usage.c.workspace_id,
            usage.c.endpoint_id,
            usage.c.served_entity_id,
            usage.c.model_family,
            hour,
            func.max(usage.c.endpoint_name).label("endpoint_name"),
            func.sum(usage.c.input_token_count).label("input_tokens"),
            func.sum(usage.c.output_token_count).label("output_tokens"),
        )
        .where(
            usage.c.request_time >= start,
            usage.c.request_time < end,
            or_(usage.c.input_token_count > 0, usage.c.output_token_count > 0),
            ~provisioned,
        )
        .group_by(
            usage.c.account_id,
            usage.c.workspace_id,
            usage.c.endpoint_id,
            usage.c.served_entity_id,
            usage.c.model_family,
            hour,
        )
    )
    measures: Measures = {}
    for row in connection.execute(query):
        card = ctx.rate_cards.at(row.hour)
        try:
            rates = card.token_rates(row.model_family)
        except UnknownRate:
            continue  # a custom model: billed by GPU time
        input_tokens, output_tokens = int(row.input_tokens), int(row.output_tokens)
        key = RecordKey(
            row.account_id,
            row.workspace_id,
            row.endpoint_id,
            row.served_entity_id,
            sku_name(ctx.tier, ctx.where(row.workspace_id)[1]),
            TOKEN,
            row.hour,
        )
        measure = Measure(
            endpoint_name=row.endpoint_name,
            serving_type=FOUNDATION_MODEL,
            rate_card_version=card.version,
            usage_quantity=token_dbu(input_tokens, output_tokens, rates),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )
        add(measures, key, measure)
    return measures
