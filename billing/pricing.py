"""Pure pricing arithmetic over `Decimal`: usage -> DBU -> money. No clock, DB or I/O.

DBUs keep 18 decimal places when stored (`billing.db.Dbu`, rounded half-even to that scale:
exact for token prices and for provisioned rates, whose per-second share terminates; a GPU
rate such as 10.48 DBU/h keeps 18 places of its prorated share). Money is rounded exactly
once, at an invoice line (`line_amount`: ROUND_HALF_EVEN to the cent); an invoice total is
the sum of its rounded lines.

Every function computes in `EXACT`, a decimal context of 50 significant digits. Products of
token counts and 3-decimal rates, and divisions by 10^6, are then exact for any realistic usage
(counts up to 10^40 tokens). A division by 3600 (seconds -> hours) is exact whenever the
quotient terminates, which the shipped rate cards guarantee for `dbu_per_chunk_hour`
(`billing.ratecard` rejects a price whose per-second share does not); otherwise (GPU workload
rates such as 10.48 DBU/h) it is correct to 50 significant digits, 30 more than storage keeps.
Negative usage or rates raise `ValueError`; floats raise `TypeError`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext

from billing.ratecard import ThroughputRate, TokenRates

EXACT = Context(prec=50, rounding=ROUND_HALF_EVEN)
TOKENS_PER_RATE_UNIT = 1_000_000  # rates are DBU per 1M tokens
SECONDS_PER_HOUR = 3600
CENT = Decimal("0.01")  # USD's minor unit


def _count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _quantity(name: str, value: Decimal | int) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise TypeError(f"{name} must be a Decimal or an int, got {type(value).__name__}")
    quantity = Decimal(value)
    if not quantity.is_finite() or quantity < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return quantity


def token_dbu(input_tokens: int, output_tokens: int, rates: TokenRates) -> Decimal:
    """Pay-per-token DBU: (input × input rate + output × output rate) / 1,000,000, exactly.
    20 input + 16 output tokens of DBRX (10.714 / 32.143) = 0.000728568 DBU."""
    _count("input_tokens", input_tokens)
    _count("output_tokens", output_tokens)
    with localcontext(EXACT):
        weighted = (
            input_tokens * rates.input_dbu_per_million
            + output_tokens * rates.output_dbu_per_million
        )
        return weighted / TOKENS_PER_RATE_UNIT


def provisioned_dbu(chunks: int, seconds: Decimal | int, rate: ThroughputRate) -> Decimal:
    """Provisioned-throughput DBU of `chunks` held for `seconds`:
    chunks × dbu_per_chunk_hour × seconds / 3600 (one division, last)."""
    return _capacity_dbu("chunks", chunks, seconds, rate.dbu_per_chunk_hour)


def gpu_dbu(replicas: int, seconds: Decimal | int, dbu_per_hour: Decimal) -> Decimal:
    """GPU (or CPU) workload DBU of `replicas` running for `seconds`, where `dbu_per_hour` is
    one replica's workload-type rate (`RateCard.gpu_dbu_per_hour`, which already covers every
    GPU of the replica): replicas × dbu_per_hour × seconds / 3600."""
    return _capacity_dbu("replicas", replicas, seconds, dbu_per_hour)


def _capacity_dbu(unit: str, units: int, seconds: Decimal | int, per_hour: Decimal) -> Decimal:
    _count(unit, units)
    held = _quantity("seconds", seconds)
    hourly = _quantity("DBU per hour", per_hour)
    with localcontext(EXACT):
        return units * hourly * held / SECONDS_PER_HOUR


def line_amount(dbu: Decimal, dollars_per_dbu: Decimal) -> Decimal:
    """An invoice line's money: dbu × $/DBU, rounded once to the cent, half to even
    (0.005 -> 0.00, 0.015 -> 0.02), so rounding errors do not drift one way over many lines.
    `dbu` may be negative: a credit line (a late correction that lowered earlier usage)."""
    quantity = -_quantity("dbu", -dbu) if dbu < 0 else _quantity("dbu", dbu)
    price = _quantity("dollars_per_dbu", dollars_per_dbu)
    with localcontext(EXACT):
        return (quantity * price).quantize(CENT, rounding=ROUND_HALF_EVEN)


def break_even_tokens_per_s(
    rates: TokenRates,
    throughput: ThroughputRate,
    *,
    output_share: Decimal,
    chunks: int = 1,
) -> Decimal:
    """The sustained tokens/s (input + output) at which pay-per-token and provisioned
    throughput cost the same per hour; above it, provisioned throughput is cheaper.

    With s = `output_share` (output tokens / all tokens, 0..1), one token costs
    p = ((1 − s) × input rate + s × output rate) / 10^6 DBU, so T tokens/s cost T × 3600 × p
    DBU/hour pay-per-token, against chunks × dbu_per_chunk_hour provisioned:
    T = chunks × dbu_per_chunk_hour / (3600 × p). Correct to 50 significant digits.
    The answer may exceed the capacity bought (chunks × chunk_size): then provisioned
    throughput never pays off for that traffic mix."""
    share = _quantity("output_share", output_share)
    if share > 1:
        raise ValueError(f"output_share must be between 0 and 1, got {output_share}")
    _count("chunks", chunks)
    with localcontext(EXACT):
        per_million = (1 - share) * rates.input_dbu_per_million
        per_million += share * rates.output_dbu_per_million
        if per_million == 0:
            raise ValueError("pay-per-token rates are zero for this output share: no break-even")
        provisioned_per_hour = chunks * throughput.dbu_per_chunk_hour
        return provisioned_per_hour * TOKENS_PER_RATE_UNIT / (SECONDS_PER_HOUR * per_million)


def split_by_hour(start: datetime, end: datetime) -> list[tuple[datetime, Decimal]]:
    """Split [start, end) at UTC hour boundaries: (hour start, seconds in that hour) per hour
    touched, in order, exact to the microsecond. Their seconds add up to end − start exactly.
    An empty interval gives []. Both ends must be timezone-aware; end must not precede start."""
    for name, moment in (("start", start), ("end", end)):
        if moment.tzinfo is None:
            raise ValueError(f"{name} {moment.isoformat()} is naive; pass a timezone-aware one")
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if end < start:
        raise ValueError(f"end {end.isoformat()} precedes start {start.isoformat()}")
    pieces = []
    hour = start.replace(minute=0, second=0, microsecond=0)
    while hour < end:
        next_hour = hour + timedelta(hours=1)
        piece = min(end, next_hour) - max(start, hour)
        pieces.append((hour, _seconds(piece)))
        hour = next_hour
    return pieces


def _seconds(delta: timedelta) -> Decimal:
    """A timedelta as exact Decimal seconds (timedelta.total_seconds() is a float)."""
    whole = Decimal(delta.days * 86_400 + delta.seconds)
    return whole + Decimal(delta.microseconds).scaleb(-6) if delta.microseconds else whole
