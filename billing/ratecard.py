"""Versioned rate cards: what a DBU costs and how many DBUs usage is worth, as data.

One TOML file per version under `billing/ratecards/` (named `<version>.toml`), in effect from its
`effective_from` (UTC) until the next version's: pay-per-token DBU per 1M input/output tokens per
model family, provisioned-throughput chunk sizes, DBU per chunk-hour and per wake from zero (per
family, optionally per model name and version), GPU workload types in DBU/hour, and $/DBU per
cloud, region class and tier. Every number is a `Decimal` (TOML floats are parsed as `Decimal`;
Python floats are rejected); `billing/ratecards/README.md` documents each shipped figure. Unknown
keys raise `UnknownRate` (a `KeyError` naming the known ones); invalid files `RateCardError`.
"""

from __future__ import annotations

import bisect
import itertools
import tomllib
from datetime import UTC, datetime
from decimal import Context, Decimal, Inexact
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from billing.skus import REGIONS, TIERS, sku_name

PACKAGED_RATE_CARDS = Path(__file__).with_name("ratecards")
# dbu_per_chunk_hour / 3600 must be exact in this many places: prorated µs stay in Numeric(38, 18).
MAX_PER_SECOND_PLACES = 12

T = TypeVar("T")


class RateCardError(ValueError):
    """A rate-card file or set of files that is not valid; the message names the file."""


class UnknownRate(KeyError):
    """No rate for a key (model family, workload type, cloud, region class, tier, moment).
    A `KeyError` whose message names the key and the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


def _reject_float(value: object) -> object:
    if isinstance(value, float):
        raise ValueError(f"float {value!r} is not accepted for DBUs or money; use a Decimal")
    return value


NonNegativeDecimal = Annotated[
    Decimal, BeforeValidator(_reject_float), Field(ge=0, allow_inf_nan=False)
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class TokenRates(_Frozen):
    """Pay-per-token prices of one model family."""

    input_dbu_per_million: NonNegativeDecimal = Field(description="DBU per 1M input tokens")
    output_dbu_per_million: NonNegativeDecimal = Field(description="DBU per 1M output tokens")


class ThroughputRate(_Frozen):
    """Provisioned-throughput prices of one model: capacity is bought in chunks of
    `chunk_size` tokens/s (`throughput_chunk_size` in files and the API)."""

    chunk_size: int = Field(
        alias="throughput_chunk_size", strict=True, gt=0, description="tokens/s per chunk"
    )
    dbu_per_chunk_hour: NonNegativeDecimal = Field(description="DBU per chunk held one hour")
    launch_dbu: NonNegativeDecimal = Field(description="DBU per wake from zero (LAUNCH SKU)")


class ThroughputOverride(ThroughputRate):
    """A model's own provisioned-throughput rate; `model_version` None: every version."""

    model_family: str
    model_name: str = Field(min_length=1)
    model_version: str | None = None


class ListPrice(_Frozen):
    """One row shaped like Databricks `system.billing.list_prices`."""

    sku_name: str
    cloud: str
    currency_code: str
    usage_unit: Literal["DBU"] = "DBU"
    price_start_time: datetime
    price_end_time: datetime | None = None
    pricing: dict[str, Decimal] = Field(description='{"default": $ per usage unit}')


def _lookup(table: dict[str, T], key: str, what: str, version: str) -> T:
    try:
        return table[key]
    except KeyError:
        known = ", ".join(sorted(table)) or "none"
        raise UnknownRate(f"rate card {version} has no {what} {key!r}; known: {known}") from None


class RateCard(_Frozen):
    """One version of the prices. Build with `load_rate_cards`; pick with `RateCards.at`."""

    version: str = Field(min_length=1)
    effective_from: AwareDatetime = Field(description="UTC; in effect until the next version")
    currency_code: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217, e.g. USD")
    pay_per_token: dict[str, TokenRates] = Field(description="model family -> token rates")
    provisioned_throughput: dict[str, ThroughputRate] = Field(default_factory=dict)
    throughput_overrides: tuple[ThroughputOverride, ...] = ()
    gpu_workload_types: dict[str, NonNegativeDecimal] = Field(description="name -> DBU/hour")
    dbu_prices: dict[str, dict[str, dict[str, NonNegativeDecimal]]] = Field(
        description="cloud -> region class -> tier -> $ per DBU"
    )

    @field_validator("effective_from")
    @classmethod
    def _effective_from_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _consistent(self) -> RateCard:
        for cloud, classes in self.dbu_prices.items():
            for region_class, tiers in classes.items():
                if set(tiers) != set(TIERS):
                    raise ValueError(
                        f"dbu_prices.{cloud}.{region_class} must price exactly the tiers "
                        f"{', '.join(TIERS)}; it has {', '.join(sorted(tiers)) or 'none'}"
                    )
        seen: set[tuple[str, str | None]] = set()
        for override in self.throughput_overrides:
            key = (override.model_name, override.model_version)
            if key in seen:
                raise ValueError(f"two throughput_overrides for model {key}")
            seen.add(key)
            if override.model_family not in self.pay_per_token:
                raise ValueError(
                    f"throughput override of {override.model_name!r} names unknown "
                    f"model_family {override.model_family!r}"
                )
        for rate in [*self.provisioned_throughput.values(), *self.throughput_overrides]:
            _check_exact_per_second(rate.dbu_per_chunk_hour)
        return self

    def token_rates(self, model_family: str) -> TokenRates:
        """Pay-per-token rates of a model family (`model_type`: "dbrx", "mixtral")."""
        return _lookup(self.pay_per_token, model_family, "pay-per-token model family", self.version)

    def throughput(
        self, model_family: str, model_name: str | None = None, model_version: str | None = None
    ) -> ThroughputRate:
        """Provisioned-throughput rate of a model: the override for exactly this name and
        version, else the override for this name (any version), else the family's rate."""
        mine: dict[tuple[str | None, str | None], ThroughputOverride] = {
            (o.model_name, o.model_version): o
            for o in self.throughput_overrides
            if o.model_family == model_family
        }
        override = mine.get((model_name, model_version)) or mine.get((model_name, None))
        if override is not None:
            return ThroughputRate(**override.model_dump(include=set(ThroughputRate.model_fields)))
        return _lookup(
            self.provisioned_throughput, model_family, "provisioned-throughput family", self.version
        )

    def gpu_dbu_per_hour(self, workload_type: str) -> Decimal:
        """DBU per hour of one replica of a workload type ("GPU_LARGE_8", "CPU", ...)."""
        return _lookup(self.gpu_workload_types, workload_type, "workload type", self.version)

    def dollars_per_dbu(self, cloud: str, region_class: str, tier: str) -> Decimal:
        """$ (in `currency_code`) per DBU for a cloud, region class (`skus.region_class`)
        and tier (PREMIUM, ENTERPRISE)."""
        classes = _lookup(self.dbu_prices, cloud, "cloud", self.version)
        tiers = _lookup(classes, region_class, f"region class of cloud {cloud!r}", self.version)
        return _lookup(tiers, tier, f"tier for {cloud}/{region_class}", self.version)

    def list_prices(self) -> list[ListPrice]:
        """One row per SKU (serving and LAUNCH) of every priced region in `skus.REGIONS`,
        per tier; open-ended (`price_end_time` None)."""
        return self._list_prices(None)

    def _list_prices(self, price_end_time: datetime | None) -> list[ListPrice]:
        priced = [
            (name, cloud, self.dbu_prices[cloud][region_class])
            for name, (cloud, region_class) in sorted(REGIONS.items())
            if region_class in self.dbu_prices.get(cloud, {})
        ]
        return [
            ListPrice(
                sku_name=sku_name(tier, name, launch=launch),
                cloud=cloud,
                currency_code=self.currency_code,
                price_start_time=self.effective_from,
                price_end_time=price_end_time,
                pricing={"default": tiers[tier]},
            )
            for name, cloud, tiers in priced
            for tier in TIERS
            for launch in (False, True)
        ]


def _check_exact_per_second(dbu_per_chunk_hour: Decimal) -> None:
    """Reject a chunk-hour price whose per-second share is not a short exact decimal, so that
    provisioned DBUs split by hour always add up exactly (3600 = 2^4·3^2·5^2: the price's
    digits must be divisible by 9, e.g. 64.8 or 226.8, not 64.7)."""
    try:
        per_second = Context(prec=50, traps=[Inexact]).divide(dbu_per_chunk_hour, Decimal(3600))
    except Inexact:
        per_second = Decimal("1e-99")  # not exact: fails the places check below
    if -int(per_second.as_tuple().exponent) > MAX_PER_SECOND_PLACES:
        raise ValueError(
            f"dbu_per_chunk_hour {dbu_per_chunk_hour} / 3600 is not an exact decimal of at most "
            f"{MAX_PER_SECOND_PLACES} places; pick a price whose digits divide by 9 (64.8, 226.8)"
        )


class RateCards(_Frozen):
    """Every version, ordered by `effective_from`."""

    cards: tuple[RateCard, ...] = Field(min_length=1)

    @field_validator("cards")
    @classmethod
    def _ordered_and_unique(cls, cards: tuple[RateCard, ...]) -> tuple[RateCard, ...]:
        ordered = tuple(sorted(cards, key=lambda card: card.effective_from))
        for earlier, later in itertools.pairwise(ordered):
            if earlier.effective_from == later.effective_from:
                raise ValueError(
                    f"versions {earlier.version} and {later.version} share effective_from "
                    f"{later.effective_from.isoformat()}"
                )
        if len({card.version for card in ordered}) != len(ordered):
            raise ValueError(f"duplicate rate-card versions in {[c.version for c in ordered]}")
        return ordered

    def at(self, moment: datetime) -> RateCard:
        """The version in effect at `moment`: the latest `effective_from` <= moment."""
        if moment.tzinfo is None:
            raise ValueError(f"moment {moment.isoformat()} is naive; pass a timezone-aware one")
        moment = moment.astimezone(UTC)
        index = bisect.bisect_right([card.effective_from for card in self.cards], moment)
        if index == 0:
            first = self.cards[0]
            raise UnknownRate(
                f"no rate card in effect at {moment.isoformat()}; the earliest, "
                f"{first.version}, is effective from {first.effective_from.isoformat()}"
            )
        return self.cards[index - 1]

    def list_prices(self) -> list[ListPrice]:
        """Every version's rows, each ending where the next version starts."""
        rows = []
        ends = [card.effective_from for card in self.cards[1:]] + [None]
        for card, end in zip(self.cards, ends, strict=True):
            rows.extend(card._list_prices(end))
        return rows


def load_rate_cards(directory: Path | None = None) -> RateCards:
    """Read and validate every `*.toml` rate card in `directory` (default: the packaged
    `billing/ratecards/`). A file must be named `<version>.toml`."""
    directory = PACKAGED_RATE_CARDS if directory is None else directory
    paths = sorted(directory.glob("*.toml"))
    if not paths:
        raise RateCardError(f"no rate-card files (*.toml) in {directory}")
    cards = tuple(_load_file(path) for path in paths)
    try:
        return RateCards(cards=cards)
    except ValidationError as exc:
        raise RateCardError(f"rate cards in {directory}: {exc}") from exc


def _load_file(path: Path) -> RateCard:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise RateCardError(f"{path}: not valid TOML: {exc}") from exc
    try:
        card = RateCard.model_validate(data)
    except ValidationError as exc:
        raise RateCardError(f"{path}: {exc}") from exc
    if card.version != path.stem:
        raise RateCardError(f"{path}: version {card.version!r} does not match the file name")
    return card
