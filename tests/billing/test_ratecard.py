"""Rate cards as data: every packaged file validates, versions are picked by date, lookups
fail loudly, list prices are shaped like `system.billing.list_prices`; SKU naming."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from billing.ratecard import (
    PACKAGED_RATE_CARDS,
    RateCard,
    RateCardError,
    ThroughputRate,
    TokenRates,
    UnknownRate,
    load_rate_cards,
)
from billing.skus import REGIONS, TIERS, UnknownRegion, region_class, sku_name
from deploy.workload_types import WORKLOAD_TYPES

PACKAGED_FILES = sorted(PACKAGED_RATE_CARDS.glob("*.toml"))
FIRST = PACKAGED_FILES[0]
NOW = datetime(2026, 11, 26, 14, 0, tzinfo=UTC)


def write_card(directory: Path, version: str, effective_from: str, **replace: str) -> Path:
    """A copy of the first packaged card under another version and date (and edits)."""
    text = FIRST.read_text(encoding="utf-8")
    text = text.replace(f'version = "{FIRST.stem}"', f'version = "{version}"')
    text = text.replace(
        "effective_from = 2024-03-27T00:00:00Z", f"effective_from = {effective_from}"
    )
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = directory / f"{version}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_packaged_directory_has_rate_cards_and_a_readme() -> None:
    assert PACKAGED_FILES
    assert (PACKAGED_RATE_CARDS / "README.md").is_file()


@pytest.mark.parametrize("path", PACKAGED_FILES, ids=lambda p: p.name)
def test_every_packaged_file_loads_and_covers_what_moeserve_serves(path: Path, tmp_path) -> None:
    (tmp_path / path.name).write_bytes(path.read_bytes())
    (card,) = load_rate_cards(tmp_path).cards
    assert card.version == path.stem
    assert card.effective_from.tzinfo is not None
    assert card.currency_code == "USD"
    for family in ("dbrx", "mixtral"):
        assert card.token_rates(family).input_dbu_per_million > 0
        assert card.throughput(family).chunk_size > 0
    for name in WORKLOAD_TYPES:  # every workload type deploy can run has a price
        assert card.gpu_dbu_per_hour(name) > 0
    for region_name, (cloud, rc) in REGIONS.items():  # every region SKU has a price
        for tier in TIERS:
            assert card.dollars_per_dbu(cloud, rc, tier) > 0, region_name
    everything = card.model_dump()
    assert not any(isinstance(v, float) for v in _leaves(everything))


def _leaves(value: object) -> list[object]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list | tuple):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def test_shipped_figures_match_pricing_md() -> None:
    card = load_rate_cards().at(NOW)
    assert card.token_rates("dbrx") == TokenRates(
        input_dbu_per_million=Decimal("10.714"), output_dbu_per_million=Decimal("32.143")
    )
    assert card.token_rates("mixtral") == TokenRates(
        input_dbu_per_million=Decimal("7.143"), output_dbu_per_million=Decimal("14.286")
    )
    assert card.gpu_dbu_per_hour("GPU_LARGE_8") == Decimal("628.0")
    assert card.gpu_dbu_per_hour("GPU_SMALL") == Decimal("10.48")
    assert card.dollars_per_dbu("aws", "us", "PREMIUM") == Decimal("0.07")
    assert card.dollars_per_dbu("gcp", "eu", "PREMIUM") == Decimal("0.077")
    assert card.dollars_per_dbu("azure", "uk", "ENTERPRISE") == Decimal("0.079")


def test_throughput_prefers_the_model_override_then_the_family() -> None:
    card = load_rate_cards().at(NOW)
    family = card.throughput("dbrx")
    tiny = card.throughput("dbrx", "dbrx-tiny", "1")
    assert type(tiny) is ThroughputRate
    assert tiny == card.throughput("dbrx", "dbrx-tiny") != family
    assert tiny.chunk_size == 2900  # measured, billing/ratecards/README.md
    assert card.throughput("dbrx", "some-finetune", "3") == family
    assert card.throughput("mixtral", "mixtral-tiny", "1").chunk_size == 4500  # measured too
    assert card.throughput("mixtral", "some-finetune") == card.throughput("mixtral")
    # An override belongs to its family: the same name under another family does not match.
    assert card.throughput("mixtral", "dbrx-tiny") == card.throughput("mixtral")


def test_a_version_specific_override_beats_the_any_version_one(tmp_path: Path) -> None:
    extra = (
        '[[throughput_overrides]]\nmodel_family = "dbrx"\nmodel_name = "dbrx-tiny"\n'
        'model_version = "2"\nthroughput_chunk_size = 100\ndbu_per_chunk_hour = 0.9\n'
        "launch_dbu = 0\n\n[gpu_workload_types]"
    )
    write_card(tmp_path, "v1", "2024-01-01T00:00:00Z", **{"[gpu_workload_types]": extra})
    card = load_rate_cards(tmp_path).at(NOW)
    assert card.throughput("dbrx", "dbrx-tiny", "2").chunk_size == 100
    assert card.throughput("dbrx", "dbrx-tiny", "1").chunk_size == 2900


def test_the_version_in_effect_is_the_latest_at_or_before_the_moment(tmp_path: Path) -> None:
    write_card(tmp_path, "2024-01-01", "2024-01-01T00:00:00Z")
    write_card(tmp_path, "2025-06-01", "2025-06-01T12:00:00+02:00")  # 10:00 UTC
    cards = load_rate_cards(tmp_path)
    switch = datetime(2025, 6, 1, 10, 0, tzinfo=UTC)
    assert [c.version for c in cards.cards] == ["2024-01-01", "2025-06-01"]
    assert cards.at(datetime(2024, 1, 1, tzinfo=UTC)).version == "2024-01-01"
    assert cards.at(switch - timedelta(microseconds=1)).version == "2024-01-01"
    assert cards.at(switch).version == "2025-06-01"
    assert cards.at(NOW).version == "2025-06-01"
    with pytest.raises(UnknownRate, match="no rate card in effect at 2023-12-31T23:59:59"):
        cards.at(datetime(2023, 12, 31, 23, 59, 59, tzinfo=UTC))
    with pytest.raises(ValueError, match="naive"):
        cards.at(datetime(2025, 1, 1))


@pytest.mark.parametrize(
    ("lookup", "message"),
    [
        (lambda c: c.token_rates("llama"), "no pay-per-token model family 'llama'; known: dbrx"),
        (lambda c: c.throughput("llama", "x"), "no provisioned-throughput family 'llama'"),
        (lambda c: c.gpu_dbu_per_hour("GPU_HUGE"), "no workload type 'GPU_HUGE'; known: CPU"),
        (lambda c: c.dollars_per_dbu("ibm", "us", "PREMIUM"), "no cloud 'ibm'; known: aws"),
        (lambda c: c.dollars_per_dbu("aws", "mars", "PREMIUM"), "region class of cloud 'aws'"),
        (lambda c: c.dollars_per_dbu("aws", "us", "GOLD"), "no tier for aws/us 'GOLD'"),
    ],
)
def test_unknown_keys_raise_a_clear_keyerror(lookup, message: str) -> None:
    card = load_rate_cards().at(NOW)
    with pytest.raises(UnknownRate, match=message) as caught:
        lookup(card)
    assert isinstance(caught.value, KeyError)


def test_list_prices_rows_are_shaped_like_system_billing_list_prices() -> None:
    card = load_rate_cards().at(NOW)
    rows = card.list_prices()
    assert len(rows) == len(REGIONS) * len(TIERS) * 2  # serving and LAUNCH SKUs
    assert len({(r.sku_name, r.cloud) for r in rows}) == len(rows)
    row = next(r for r in rows if r.sku_name == "PREMIUM_SERVERLESS_REAL_TIME_INFERENCE_US_EAST_1")
    assert row.model_dump() == {
        "sku_name": "PREMIUM_SERVERLESS_REAL_TIME_INFERENCE_US_EAST_1",
        "cloud": "aws",
        "currency_code": "USD",
        "usage_unit": "DBU",
        "price_start_time": card.effective_from,
        "price_end_time": None,
        "pricing": {"default": Decimal("0.07")},
    }
    launch = {r.sku_name: r for r in rows}[
        "ENTERPRISE_SERVERLESS_REAL_TIME_INFERENCE_LAUNCH_UKSOUTH"
    ]
    assert (launch.cloud, launch.pricing) == ("azure", {"default": Decimal("0.079")})


def test_list_prices_across_versions_end_where_the_next_begins(tmp_path: Path) -> None:
    write_card(tmp_path, "a", "2024-01-01T00:00:00Z")
    write_card(
        tmp_path,
        "b",
        "2025-01-01T00:00:00Z",
        **{"us = { PREMIUM = 0.07,": "us = { PREMIUM = 0.08,"},
    )
    cards = load_rate_cards(tmp_path)
    rows = cards.list_prices()
    a, b = cards.cards
    per_version = len(a.list_prices())
    assert len(rows) == 2 * per_version
    assert {r.price_end_time for r in rows[:per_version]} == {b.effective_from}
    assert {r.price_end_time for r in rows[per_version:]} == {None}
    sku = "PREMIUM_SERVERLESS_REAL_TIME_INFERENCE_US_EAST_1"
    assert [r.pricing["default"] for r in rows if r.sku_name == sku] == [
        Decimal("0.07"),
        Decimal("0.08"),
    ]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({'version = "x"': 'version = "y"'}, "does not match the file name"),
        ({"dbu_per_chunk_hour = 64.8": "dbu_per_chunk_hour = 64.7"}, "not an exact decimal"),
        (
            {"sa = { PREMIUM = 0.088, ENTERPRISE = 0.088 }": "sa = { PREMIUM = 0.088 }"},
            "exactly the tiers",
        ),
        (
            {"input_dbu_per_million = 7.143": "input_dbu_per_million = -7.143"},
            "greater than or equal",
        ),
        ({'model_family = "dbrx"': 'model_family = "llama"'}, "unknown model_family 'llama'"),
        ({"throughput_chunk_size = 3000": "throughput_chunk_size = 3000.5"}, "valid integer"),
        ({"GPU_SMALL = 10.48": "GPU_SMALL = 10.48\nGPU_SMALL2 = [1]"}, "GPU_SMALL2"),
        ({'currency_code = "USD"': 'currency_code = "usd"'}, "currency_code"),
        ({"[pay_per_token.dbrx]": "[pay_per_token.dbrx]\ninput_dbu = 1"}, "Extra inputs"),
        ({"effective_from = 2024": "effective_from = 2024-01-01T00:00:00\n#"}, "timezone"),
        ({"[gpu_workload_types]": "[gpu_workload_types\n"}, "not valid TOML"),
    ],
)
def test_invalid_files_are_rejected_naming_the_problem(tmp_path: Path, edit, message) -> None:
    write_card(tmp_path, "x", "2024-01-01T00:00:00Z", **edit)
    with pytest.raises(RateCardError, match=message):
        load_rate_cards(tmp_path)


def test_directory_level_errors(tmp_path: Path) -> None:
    with pytest.raises(RateCardError, match="no rate-card files"):
        load_rate_cards(tmp_path)
    write_card(tmp_path, "a", "2024-01-01T00:00:00Z")
    write_card(tmp_path, "b", "2024-01-01T00:00:00Z")
    with pytest.raises(RateCardError, match="share effective_from"):
        load_rate_cards(tmp_path)


def test_python_floats_are_rejected_by_the_models() -> None:
    with pytest.raises(ValidationError, match=r"float 0\.1 is not accepted"):
        TokenRates(input_dbu_per_million=0.1, output_dbu_per_million=Decimal(1))  # type: ignore[arg-type]
    assert RateCard.model_fields["dbu_prices"].description


# --- SKUs and regions -------------------------------------------------------------------


def test_sku_names() -> None:
    assert sku_name("PREMIUM", "us-east-1") == "PREMIUM_SERVERLESS_REAL_TIME_INFERENCE_US_EAST_1"
    assert (
        sku_name("enterprise", "europe-west2", launch=True)
        == "ENTERPRISE_SERVERLESS_REAL_TIME_INFERENCE_LAUNCH_EUROPE_WEST2"
    )
    assert sku_name("PREMIUM", "local") == "PREMIUM_SERVERLESS_REAL_TIME_INFERENCE_LOCAL"
    with pytest.raises(ValueError, match="unknown tier 'GOLD'; choose one of PREMIUM, ENTERPRISE"):
        sku_name("GOLD", "us-east-1")
    with pytest.raises(ValueError, match="is not a region id"):
        sku_name("PREMIUM", "US East 1")


@pytest.mark.parametrize(
    ("region", "expected"),
    [
        ("us-east-1", "us"),
        ("us-central1", "us"),
        ("eastus", "us"),
        ("eu-west-1", "eu"),
        ("eu-west-2", "uk"),
        ("europe-west2", "uk"),
        ("ap-northeast-1", "apac"),
        ("ap-southeast-2", "apac_southeast"),
        ("sa-east-1", "sa"),
        ("local", "local"),
    ],
)
def test_region_classes(region: str, expected: str) -> None:
    assert region_class(region) == expected


def test_unknown_region_is_a_clear_keyerror() -> None:
    with pytest.raises(UnknownRegion, match=r"unknown region 'mars-1'; known regions: .*us-east-1"):
        region_class("mars-1")
    with pytest.raises(KeyError):
        region_class("mars-1")
