"""What the billing API answers, as typed models: request-level usage rows, hourly usage
records, list prices, invoices and their lines, the pricing-mode estimate.

DBUs and money are `Decimal`s, sent as exact decimal strings (never floats, no storage
padding); times are ISO 8601 in UTC. Listings answer `{name: [rows]}` as JSON, or CSV with
the same columns (`listing.listing`).
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer


def _exact(value: Decimal) -> str:
    return format(value.normalize(), "f")  # exact, no exponent, no storage padding


ExactDecimal = Annotated[Decimal, PlainSerializer(_exact, return_type=str, when_used="json")]

_CENT = Decimal("0.01")


def _money(value: Decimal) -> str:
    """An amount with at least two decimal places (12.30, not 12.3), and no fewer digits than
    it holds (an unrounded 0.004 stays 0.004)."""
    exact = value.normalize()
    exponent = exact.as_tuple().exponent
    return format(
        exact.quantize(_CENT) if isinstance(exponent, int) and exponent >= -2 else exact, "f"
    )


Money = Annotated[Decimal, PlainSerializer(_money, return_type=str, when_used="json")]


def _rounded(places: int) -> PlainSerializer:
    """A derived ratio (not money, not DBUs) rounded half-even to `places` decimals."""
    quantum = Decimal(1).scaleb(-places)

    def shown(value: Decimal) -> str:
        return _exact(value.quantize(quantum, rounding=ROUND_HALF_EVEN))

    return PlainSerializer(shown, return_type=str, when_used="json")


TokensPerSecond = Annotated[Decimal, _rounded(3)]
Share = Annotated[Decimal, _rounded(6)]


class _Row(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class EndpointUsageRow(_Row):
    """One accepted query (Databricks `system.serving.endpoint_usage`)."""

    databricks_request_id: str
    client_request_id: str | None
    requester: str
    status_code: int
    request_time: datetime
    served_entity_id: str
    endpoint_name: str
    endpoint_id: str
    workspace_id: str | None
    input_token_count: int
    output_token_count: int
    request_streaming: bool
    usage_context: dict[str, str] | None


class EndpointUsageList(BaseModel):
    endpoint_usage: list[EndpointUsageRow]


class UsageRecordRow(_Row):
    """One hourly record (Databricks `system.billing.usage`)."""

    record_id: str
    account_id: str
    workspace_id: str | None
    sku_name: str
    cloud: str
    usage_start_time: datetime
    usage_end_time: datetime
    usage_date: date
    custom_tags: dict[str, str]
    usage_unit: str
    usage_quantity: ExactDecimal
    usage_metadata: dict[str, Any]
    identity_metadata: dict[str, Any]
    record_type: str = Field(description="ORIGINAL, RETRACTION or RESTATEMENT")
    billing_origin_product: str
    product_features: dict[str, Any]
    usage_type: str = Field(description="TOKEN, GPU_TIME or COMPUTE_TIME")


class UsageRecordList(BaseModel):
    records: list[UsageRecordRow]


class ListPriceRow(_Row):
    """One SKU's price (Databricks `system.billing.list_prices`)."""

    sku_name: str
    cloud: str
    currency_code: str
    usage_unit: str
    price_start_time: datetime
    price_end_time: datetime | None
    pricing: dict[str, ExactDecimal] = Field(description='{"default": $ per usage unit}')


class ListPriceList(BaseModel):
    prices: list[ListPriceRow]


class InvoiceLineRow(_Row):
    line_no: int
    sku_name: str
    endpoint_id: str
    endpoint_name: str
    usage_type: str
    dbu: ExactDecimal
    dollars_per_dbu: ExactDecimal
    amount: Money = Field(description="dbu x dollars_per_dbu, rounded half-even to cents")


class InvoiceRow(_Row):
    invoice_id: str
    account_id: str
    workspace_id: str
    period: str = Field(description="YYYY-MM (UTC)")
    currency: str
    status: str = Field(description="draft, open, paid or payment_failed")
    subtotal: Money
    total: Money = Field(description="the sum of the rounded lines")
    rate_card_version: str | None
    created_at: datetime
    stripe_invoice_id: str | None


class InvoiceList(BaseModel):
    invoices: list[InvoiceRow]


class InvoiceDetail(InvoiceRow):
    lines: list[InvoiceLineRow]


class InvoiceLineList(BaseModel):
    invoice_lines: list[InvoiceLineRow]


class Cost(BaseModel):
    dbu: ExactDecimal
    dollars: Money


class ActualCost(Cost):
    mode: str = Field(description="pay_per_token or provisioned_throughput")


class AlternativeCost(ActualCost):
    provisioned_chunks: int
    throughput_chunk_size: int


class Traffic(BaseModel):
    input_tokens: int
    output_tokens: int
    peak_tokens_per_s: TokensPerSecond
    output_share: Share


class Estimate(BaseModel):
    """An endpoint's cost over a window, and the same traffic in the other pricing mode."""

    endpoint_name: str
    start_time: datetime
    end_time: datetime
    actual: ActualCost
    alternative: AlternativeCost
    break_even_tokens_per_s: TokensPerSecond
    traffic: Traffic
    dollars_per_dbu: ExactDecimal


class WebhookResult(BaseModel):
    result: str


class Granularity(StrEnum):
    """The width of a time-series bucket (UTC hours or UTC days)."""

    HOUR = "HOUR"
    DAY = "DAY"


class SeriesGroup(StrEnum):
    """What a spend series is stacked by."""

    ENDPOINT = "ENDPOINT"
    SKU = "SKU"


class Spend(BaseModel):
    """DBUs (exact) and their list-price dollars, rounded half-even to cents once, from the
    exact sum of DBU x $/DBU where each workspace lives (the budgets' formula)."""

    dbu: ExactDecimal
    dollars: Money


class SkuSpend(Spend):
    sku_name: str


class EndpointSpend(Spend):
    endpoint_name: str
    endpoint_id: str
    workspace_id: str | None


class SeriesPoint(Spend):
    bucket_start: datetime = Field(description="the bucket's first instant (UTC)")
    key: str = Field(description="the endpoint name or the SKU, as `group_by` says")


class MonthSpend(BaseModel):
    """The current UTC month: spent so far and a linear forecast to its end."""

    month: str = Field(description="YYYY-MM (UTC)")
    month_to_date: Spend
    forecast: Spend = Field(
        description="month to date x (the month's length / its time elapsed so far); "
        "DBUs to six places"
    )


class BillingSummary(BaseModel):
    """Spend over [start_time, end_time) in one read of the usage records (stored hours plus
    the live ones, as `GET /usage` lists them), and the current month's."""

    start_time: datetime
    end_time: datetime
    granularity: Granularity
    group_by: SeriesGroup
    currency: str = Field(description="ISO 4217 code of every dollar figure")
    total: Spend
    by_sku: list[SkuSpend] = Field(description="largest first")
    by_endpoint: list[EndpointSpend] = Field(description="largest first")
    series: list[SeriesPoint] = Field(description="oldest bucket first")
    month: MonthSpend


class EndpointStatsPoint(BaseModel):
    bucket_start: datetime
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int


class EndpointStats(BaseModel):
    """One endpoint's traffic over [start_time, end_time), from its request-level usage rows:
    errors are rows with a status of 400 or more; latencies are nearest-rank percentiles
    of the rows that carry one (a request cut short by a crash has none)."""

    endpoint_name: str
    start_time: datetime
    end_time: datetime
    granularity: Granularity
    requests: int
    errors: int
    error_rate: Share = Field(description="errors / requests to six places (0 without requests)")
    input_tokens: int
    output_tokens: int
    p50_latency_ms: int | None
    p99_latency_ms: int | None
    series: list[EndpointStatsPoint]


class WorkspaceRef(BaseModel):
    workspace_id: str
    name: str


class BillingViewer(BaseModel):
    """Who the token belongs to and which workspaces' billing it may read."""

    user_name: str
    account_id: str
    workspace_id: str = Field(description="the token's own workspace")
    is_account_admin: bool
    is_workspace_admin: bool
    workspaces: list[WorkspaceRef] = Field(
        description="every workspace of the account for account admins; else its own"
    )
