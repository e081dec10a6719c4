"""The instance catalog's typed form and its loader.

One TOML file per cloud (`aws.toml`, `gcp.toml`, `azure.toml`, shipped as package data in
this package) lists the cloud's regions and its GPU instance types: GPU part, count and
memory, vCPUs and RAM, the regions that offer it, its on-demand price in USD/hour with the
date and source of the figure, and the workload types it serves. TOML floats are read as
`Decimal` and Python floats are rejected, as in the rate cards. Files are read on first use
(`packaged_catalog()`), never at import time.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Iterable
from datetime import date
from decimal import Decimal
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from deploy.catalog.gpus import NOMINAL_MEMORY_GIB, GpuModel, why_cannot_host
from deploy.workload_types import WORKLOAD_TYPES

Cloud = Literal["aws", "gcp", "azure"]
CLOUDS: tuple[Cloud, ...] = ("aws", "gcp", "azure")
RegionId = Annotated[str, Field(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$")]
# Keys a file may set once at its top for every entry (an entry may still set its own).
FILE_DEFAULTS = ("price_as_of", "price_source", "price_region")


class CatalogError(ValueError):
    """A catalog file or directory that is not valid; the message names the file."""


def _reject_float(value: object) -> object:
    if isinstance(value, float):
        raise ValueError(f"float {value!r} is not accepted for money; use a Decimal")
    return value


UsdPerHour = Annotated[Decimal, BeforeValidator(_reject_float), Field(gt=0, allow_inf_nan=False)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InstanceType(_Frozen):
    """One VM shape of one cloud. Prices are on-demand list prices, Linux, USD per hour."""

    name: str = Field(min_length=1, description="the cloud's own name, e.g. p4de.24xlarge")
    family: str = Field(min_length=1, description="e.g. p4de, a2-ultragpu, ND A100 v4")
    gpu_model: GpuModel
    gpu_count: int = Field(strict=True, ge=1, le=16, description="GPUs on one node")
    gpu_memory_gib: int = Field(strict=True, gt=0, description="memory per GPU, nominal")
    vcpus: int = Field(strict=True, gt=0)
    ram_gib: int = Field(strict=True, gt=0)
    regions: tuple[RegionId, ...] = Field(min_length=1, description="regions offering it")
    usd_per_hour: UsdPerHour = Field(description="on-demand price in `price_region`")
    price_region: RegionId = Field(description="the region `usd_per_hour` was taken in")
    region_prices: dict[RegionId, UsdPerHour] = Field(
        default_factory=dict, description="regions with their own figure; others use usd_per_hour"
    )
    price_as_of: date
    price_source: str = Field(min_length=1)
    workload_types: tuple[str, ...] = Field(description="workload types it may host")

    @model_validator(mode="after")
    def _consistent(self) -> InstanceType:
        nominal = NOMINAL_MEMORY_GIB[self.gpu_model]
        if self.gpu_memory_gib != nominal:
            raise ValueError(
                f"{self.name}: {self.gpu_model} has {nominal} GiB per GPU, "
                f"not {self.gpu_memory_gib}"
            )
        if len(set(self.regions)) != len(self.regions):
            raise ValueError(f"{self.name}: regions repeat: {list(self.regions)}")
        priced = {self.price_region, *self.region_prices}
        if not priced <= set(self.regions):
            stray = sorted(priced - set(self.regions))
            raise ValueError(f"{self.name}: priced in {stray}, which it is not offered in")
        for name in self.workload_types:
            workload = WORKLOAD_TYPES.get(name)
            if workload is None:
                raise ValueError(f"{self.name}: unknown workload type {name!r}")
            reason = why_cannot_host(workload, self.gpu_model, self.gpu_count)
            if reason is not None:
                raise ValueError(f"{self.name} cannot serve {name}: it {reason}")
        return self

    def serves(self, workload_type: str) -> bool:
        return workload_type in self.workload_types

    def price_in(self, region: str) -> tuple[Decimal, str]:
        """The hourly price in `region` (offered there) and the region the figure was taken
        in: `region` itself where the catalog has its own figure, else `price_region`."""
        if region not in self.regions:
            raise KeyError(f"{self.name} is not offered in {region}")
        if region in self.region_prices:
            return self.region_prices[region], region
        return self.usd_per_hour, self.price_region


class CloudCatalog(_Frozen):
    """One cloud's file: the regions it knows and its instance types."""

    cloud: Cloud
    regions: tuple[RegionId, ...] = Field(min_length=1)
    instance_types: tuple[InstanceType, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> CloudCatalog:
        names = [it.name for it in self.instance_types]
        if len(set(names)) != len(names):
            raise ValueError(f"instance type names repeat: {sorted(names)}")
        known = set(self.regions)
        for it in self.instance_types:
            if not set(it.regions) <= known:
                stray = sorted(set(it.regions) - known)
                raise ValueError(f"{it.name}: regions {stray} are not {self.cloud} regions here")
        return self

    def instance_type(self, name: str) -> InstanceType | None:
        return next((it for it in self.instance_types if it.name == name), None)


class Catalog(_Frozen):
    """Every cloud's catalog, by cloud."""

    clouds: dict[str, CloudCatalog]

    @field_validator("clouds")
    @classmethod
    def _keyed_by_cloud(cls, clouds: dict[str, CloudCatalog]) -> dict[str, CloudCatalog]:
        for key, catalog in clouds.items():
            if key != catalog.cloud:
                raise ValueError(f"catalog of {catalog.cloud} filed under {key}")
        return clouds


def load_catalog(directory: Traversable | None = None) -> Catalog:
    """Read and validate every `<cloud>.toml` in `directory` (default: this package's files).
    A `pathlib.Path` is a `Traversable`, so an operator's own directory works too."""
    directory = resources.files("deploy.catalog") if directory is None else directory
    files = sorted(
        (entry for entry in directory.iterdir() if entry.name.endswith(".toml")),
        key=lambda entry: entry.name,
    )
    if not files:
        raise CatalogError(f"no catalog files (*.toml) in {directory}")
    clouds = [_load_file(entry) for entry in files]
    try:
        return Catalog(clouds={catalog.cloud: catalog for catalog in clouds})
    except ValidationError as exc:
        raise CatalogError(f"catalog in {directory}: {exc}") from exc


@functools.cache
def packaged_catalog() -> Catalog:
    """The shipped catalog, read once on first use."""
    return load_catalog()


def _load_file(entry: Traversable) -> CloudCatalog:
    try:
        data = tomllib.loads(entry.read_text(encoding="utf-8"), parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{entry.name}: not valid TOML: {exc}") from exc
    defaults = {key: data.pop(key) for key in FILE_DEFAULTS if key in data}
    data["instance_types"] = list(_with_defaults(data.get("instance_types", ()), defaults))
    try:
        catalog = CloudCatalog.model_validate(data)
    except ValidationError as exc:
        raise CatalogError(f"{entry.name}: {exc}") from exc
    if f"{catalog.cloud}.toml" != entry.name:
        raise CatalogError(f"{entry.name}: holds cloud {catalog.cloud!r}; name it after it")
    return catalog


def _with_defaults(entries: Iterable[object], defaults: dict[str, object]) -> Iterable[object]:
    for entry in entries:
        yield {**defaults, **entry} if isinstance(entry, dict) else entry
