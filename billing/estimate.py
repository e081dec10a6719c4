"""What the same traffic costs in the other pricing mode (pure).

Pay-per-token bills the tokens; provisioned throughput bills chunk-hours whatever the
traffic. For a window of traffic (tokens per hour), `compare_modes` prices both: the tokens
at the pay-per-token rates, and the smallest whole number of chunks whose capacity covers the
busiest hour's average tokens/s, held for the whole window. The break-even is the sustained
tokens/s at which the two cost the same for that many chunks and the window's output share
(0.2 when there was no traffic).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext

from billing.pricing import EXACT, break_even_tokens_per_s, provisioned_dbu, token_dbu
from billing.ratecard import ThroughputRate, TokenRates

DEFAULT_OUTPUT_SHARE = Decimal("0.2")
SECONDS_PER_HOUR = 3600


@dataclass(frozen=True)
class HourTokens:
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class ModeComparison:
    pay_per_token_dbu: Decimal
    provisioned_dbu: Decimal
    provisioned_chunks: int  # the smallest that covers the busiest hour
    peak_tokens_per_s: Decimal  # the busiest hour's average
    output_share: Decimal
    break_even_tokens_per_s: Decimal
    input_tokens: int
    output_tokens: int


def compare_modes(
    hours: Sequence[HourTokens],
    window_seconds: int | Decimal,
    rates: TokenRates,
    throughput: ThroughputRate,
) -> ModeComparison:
    total_in = sum(h.input_tokens for h in hours)
    total_out = sum(h.output_tokens for h in hours)
    with localcontext(EXACT):
        peak = max(
            (Decimal(h.input_tokens + h.output_tokens) / SECONDS_PER_HOUR for h in hours),
            default=Decimal(0),
        )
        share = (
            Decimal(total_out) / Decimal(total_in + total_out)
            if total_in + total_out
            else DEFAULT_OUTPUT_SHARE
        )
    chunks = max(1, math.ceil(peak / throughput.chunk_size))
    return ModeComparison(
        pay_per_token_dbu=token_dbu(total_in, total_out, rates),
        provisioned_dbu=provisioned_dbu(chunks, window_seconds, throughput),
        provisioned_chunks=chunks,
        peak_tokens_per_s=peak,
        output_share=share,
        break_even_tokens_per_s=break_even_tokens_per_s(
            rates, throughput, output_share=share, chunks=chunks
        ),
        input_tokens=total_in,
        output_tokens=total_out,
    )
