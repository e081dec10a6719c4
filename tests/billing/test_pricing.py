"""Pricing arithmetic: docs/pricing.md's worked examples pinned exactly, plus properties."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.pricing import (
    break_even_tokens_per_s,
    gpu_dbu,
    line_amount,
    provisioned_dbu,
    split_by_hour,
    token_dbu,
)
from billing.ratecard import ThroughputRate, TokenRates, load_rate_cards

DBRX = TokenRates(input_dbu_per_million=Decimal("10.714"), output_dbu_per_million=Decimal("32.143"))
MIXTRAL = TokenRates(
    input_dbu_per_million=Decimal("7.143"), output_dbu_per_million=Decimal("14.286")
)
CHUNK = ThroughputRate(
    throughput_chunk_size=6000, dbu_per_chunk_hour=Decimal("226.8"), launch_dbu=Decimal("18.9")
)
AWKWARD = ThroughputRate(  # 85.7 / 3600 does not terminate: exact only to 50 digits
    throughput_chunk_size=1000, dbu_per_chunk_hour=Decimal("85.7"), launch_dbu=Decimal(0)
)
T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)

tokens = st.integers(min_value=0, max_value=10**12)
seconds = st.decimals(min_value=0, max_value=10**7, places=6, allow_nan=False)
moments = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
)


def test_pay_per_token_worked_example_is_exact() -> None:
    dbu = token_dbu(20, 16, DBRX)
    assert dbu == Decimal("0.000728568")
    assert str(dbu) == "0.000728568"
    assert dbu * Decimal("0.07") == Decimal("0.00005099976")


def test_pay_per_token_uses_the_family_rates_of_the_packaged_card() -> None:
    card = load_rate_cards().at(T0)
    assert token_dbu(20, 16, card.token_rates("dbrx")) == Decimal("0.000728568")
    assert token_dbu(1_000_000, 1_000_000, card.token_rates("mixtral")) == Decimal("21.429")


def test_provisioned_two_chunks_for_90_seconds() -> None:
    rate = Decimal("226.8")
    assert provisioned_dbu(2, 90, CHUNK) == 2 * rate * 90 / 3600 == Decimal("11.34")
    assert provisioned_dbu(2, Decimal("90.000001"), CHUNK) == Decimal("11.340000126")


def test_provisioned_across_an_hour_boundary_adds_up_to_the_whole() -> None:
    start = T0 + timedelta(minutes=59, seconds=15)  # 45 s before 11:00, 45 s after
    pieces = split_by_hour(start, start + timedelta(seconds=90))
    assert pieces == [(T0, Decimal(45)), (T0 + timedelta(hours=1), Decimal(45))]
    per_hour = [provisioned_dbu(2, s, CHUNK) for _, s in pieces]
    assert per_hour == [Decimal("5.67"), Decimal("5.67")]
    assert sum(per_hour) == provisioned_dbu(2, 90, CHUNK)


def test_gpu_dbu_prorates_replica_hours() -> None:
    assert gpu_dbu(2, 1800, Decimal("628.0")) == Decimal("628.0")
    assert gpu_dbu(1, 3600, Decimal("10.48")) == Decimal("10.48")
    assert gpu_dbu(0, 3600, Decimal("10.48")) == 0


def test_line_amount_rounds_once_half_even_to_the_cent() -> None:
    assert line_amount(Decimal("0.000728568"), Decimal("0.07")) == Decimal("0.00")
    assert line_amount(Decimal("1000"), Decimal("0.07")) == Decimal("70.00")
    assert line_amount(Decimal("0.5"), Decimal("0.01")) == Decimal("0.00")  # 0.005 -> even
    assert line_amount(Decimal("1.5"), Decimal("0.01")) == Decimal("0.02")  # 0.015 -> even
    assert line_amount(Decimal("2.5"), Decimal("0.01")) == Decimal("0.02")  # 0.025 -> even
    # Summing first, rounding once: 1,000 requests of 0.000728568 DBU are $0.05, not $0.00.
    total = sum((token_dbu(20, 16, DBRX) for _ in range(1000)), Decimal(0))
    assert line_amount(total, Decimal("0.07")) == Decimal("0.05")


def test_break_even_matches_the_cost_per_hour_of_both_modes() -> None:
    share = Decimal("0.2")
    t = break_even_tokens_per_s(DBRX, CHUNK, output_share=share, chunks=2)
    with localcontext(prec=60):  # checked with more digits than the function uses
        in_rate, out_rate = DBRX.input_dbu_per_million, DBRX.output_dbu_per_million
        per_token = ((1 - share) * in_rate + share * out_rate) / 10**6
        assert abs(t * 3600 * per_token - 2 * CHUNK.dbu_per_chunk_hour) < Decimal("1e-40")
    # The shipped rule: break-even at ~70 % of one chunk at output share 0.2.
    one = break_even_tokens_per_s(DBRX, CHUNK, output_share=share)
    assert Decimal("0.69") < one / CHUNK.chunk_size < Decimal("0.71")
    # Output-only traffic is dearer per token, so it breaks even at fewer tokens/s.
    assert break_even_tokens_per_s(DBRX, CHUNK, output_share=Decimal(1)) < one


def test_split_by_hour_keeps_microseconds_and_converts_to_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    start = datetime(2024, 5, 1, 12, 59, 59, 999_999, tzinfo=plus_two)  # 10:59:59.999999 UTC
    end = datetime(2024, 5, 1, 13, 0, 0, 1, tzinfo=plus_two)
    assert split_by_hour(start, end) == [
        (T0, Decimal("0.000001")),
        (T0 + timedelta(hours=1), Decimal("0.000001")),
    ]
    assert split_by_hour(T0, T0) == []
    assert split_by_hour(T0, T0 + timedelta(hours=1)) == [(T0, Decimal(3600))]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: token_dbu(-1, 0, DBRX), ValueError, "input_tokens must be >= 0"),
        (lambda: token_dbu(0, -5, DBRX), ValueError, "output_tokens must be >= 0"),
        (lambda: token_dbu(1.5, 0, DBRX), TypeError, "input_tokens must be an int"),  # type: ignore[arg-type]
        (lambda: provisioned_dbu(-2, 90, CHUNK), ValueError, "chunks must be >= 0"),
        (lambda: provisioned_dbu(2, Decimal(-1), CHUNK), ValueError, "seconds must be"),
        (lambda: provisioned_dbu(2, 1.5, CHUNK), TypeError, "seconds must be a Decimal"),  # type: ignore[arg-type]
        (lambda: gpu_dbu(1, 60, Decimal("-1")), ValueError, "DBU per hour must be"),
        (lambda: line_amount(Decimal("1"), Decimal("NaN")), ValueError, "dollars_per_dbu"),
        (
            lambda: break_even_tokens_per_s(DBRX, CHUNK, output_share=Decimal("1.5")),
            ValueError,
            "output_share must be between 0 and 1",
        ),
        (lambda: split_by_hour(T0, T0 - timedelta(seconds=1)), ValueError, "precedes start"),
        (lambda: split_by_hour(datetime(2024, 5, 1), T0), ValueError, "naive"),
    ],
)
def test_bad_inputs_are_rejected_with_a_clear_message(call, error, message) -> None:
    with pytest.raises(error, match=message):
        call()


# --- properties -------------------------------------------------------------------------


@given(a_in=tokens, a_out=tokens, b_in=tokens, b_out=tokens)
def test_token_dbu_is_additive(a_in: int, a_out: int, b_in: int, b_out: int) -> None:
    for rates in (DBRX, MIXTRAL):
        split = token_dbu(a_in, a_out, rates) + token_dbu(b_in, b_out, rates)
        assert split == token_dbu(a_in + b_in, a_out + b_out, rates)


@given(usage=st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), tokens, tokens), max_size=30))
def test_line_items_sum_to_the_total_exactly(usage: list[tuple[str, int, int]]) -> None:
    """Rating each request and summing per line equals rating the line's summed tokens;
    the invoice total (sum of lines rounded once) is within half a cent per line of the
    rounded exact total."""
    lines: dict[str, Decimal] = {}
    for line, n_in, n_out in usage:
        lines[line] = lines.get(line, Decimal(0)) + token_dbu(n_in, n_out, DBRX)
    all_dbu = token_dbu(sum(u[1] for u in usage), sum(u[2] for u in usage), DBRX)
    assert sum(lines.values(), Decimal(0)) == all_dbu
    price = Decimal("0.07")
    amounts = [line_amount(dbu, price) for dbu in lines.values()]
    total = sum(amounts, Decimal(0))
    assert all(a == a.quantize(Decimal("0.01")) for a in amounts)
    assert abs(total - all_dbu * price) <= Decimal("0.005") * len(amounts)


@given(usage=st.lists(st.tuples(tokens, tokens, st.integers(0, 64), seconds), max_size=20))
def test_rerating_is_deterministic_and_never_negative(
    usage: list[tuple[int, int, int, Decimal]],
) -> None:
    def rate_all() -> list[Decimal]:
        return [
            d
            for n_in, n_out, chunks, held in usage
            for d in (
                token_dbu(n_in, n_out, DBRX),
                provisioned_dbu(chunks, held, CHUNK),
                provisioned_dbu(chunks, held, AWKWARD),
                gpu_dbu(chunks, held, Decimal("10.48")),
            )
        ]

    first, second = rate_all(), rate_all()
    assert first == second
    assert [str(d) for d in first] == [str(d) for d in second]
    assert all(d >= 0 for d in first)


@given(start=moments, length=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3)))
def test_split_by_hour_preserves_total_seconds(start: datetime, length: timedelta) -> None:
    pieces = split_by_hour(start, start + length)
    exact = Decimal(length.days * 86400 + length.seconds) + Decimal(length.microseconds) / 10**6
    assert sum((s for _, s in pieces), Decimal(0)) == exact
    assert all(Decimal(0) < s <= 3600 for _, s in pieces)
    hours = [h for h, _ in pieces]
    assert all(h.minute == h.second == h.microsecond == 0 for h in hours)
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(hours))


@given(
    start=moments,
    length=st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=30)),
    chunks=st.integers(0, 64),
)
def test_provisioned_dbu_split_by_hour_adds_up_exactly(
    start: datetime, length: timedelta, chunks: int
) -> None:
    """With a shipped-style price (226.8 / 3600 terminates) hour buckets lose nothing."""
    pieces = split_by_hour(start, start + length)
    whole = sum((s for _, s in pieces), Decimal(0))
    assert sum(
        (provisioned_dbu(chunks, s, CHUNK) for _, s in pieces), Decimal(0)
    ) == provisioned_dbu(chunks, whole, CHUNK)


def test_a_negative_line_is_a_credit_rounded_the_same_way() -> None:
    assert line_amount(Decimal("-0.5"), Decimal("0.07")) == Decimal("-0.04")  # -0.035, to even
    assert line_amount(Decimal("-2"), Decimal("0.07")) == -line_amount(Decimal(2), Decimal("0.07"))
