"""The GPU instance catalog: the shipped files validate and cover the required families, every
figure is a dated, sourced Decimal, regions are billing regions, and the picker chooses the
cheapest shape that holds a replica on one node, honours a pin, and refuses with the reason.

Picker rules are tested on small catalogs written to a temp directory (so they do not move
when a shipped price is updated); the shipped catalog is tested for what the docs promise."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from billing.skus import REGIONS
from deploy.catalog import (
    Candidate,
    Catalog,
    CatalogError,
    GpuModel,
    InstanceType,
    NoShapeFits,
    NotOfferedInRegion,
    PinnedCannotServe,
    ShapeRefused,
    UnknownCloud,
    UnknownInstanceType,
    UnknownRegion,
    UnsupportedWorkload,
    candidates,
    candidates_across,
    load_catalog,
    packaged_catalog,
    pick,
)
from deploy.catalog.gpus import GPU_CLASS_MODELS, NOMINAL_MEMORY_GIB, why_cannot_host
from deploy.workload_types import WORKLOAD_TYPES

SHIPPED = packaged_catalog()
ALL_SHAPES = [(c.cloud, it) for c in SHIPPED.clouds.values() for it in c.instance_types]
GPU_WORKLOADS = [w for w in WORKLOAD_TYPES.values() if w.device == "cuda"]


# --- the shipped data ---------------------------------------------------------------------


def test_the_shipped_catalog_has_aws_gcp_and_azure() -> None:
    assert set(SHIPPED.clouds) == {"aws", "gcp", "azure"}


@pytest.mark.parametrize(
    ("cloud", "required"),
    [
        ("aws", {"p4d", "p4de", "p5", "g5", "g6"}),
        ("gcp", {"a2-highgpu", "a2-ultragpu", "a3-highgpu", "g2"}),
        ("azure", {"ND A100 v4", "ND H100 v5", "NC A100 v4", "NVadsA10 v5"}),
    ],
)
def test_every_required_family_is_catalogued(cloud: str, required: set[str]) -> None:
    families = {it.family for it in SHIPPED.clouds[cloud].instance_types}
    assert required <= families


@pytest.mark.parametrize(
    "name",
    [
        "Standard_ND96asr_v4",
        "Standard_ND96amsr_A100_v4",
        "Standard_ND96isr_H100_v5",
        "Standard_NC24ads_A100_v4",
        "Standard_NV36ads_A10_v5",
    ],
)
def test_the_named_azure_sizes_are_catalogued(name: str) -> None:
    assert SHIPPED.clouds["azure"].instance_type(name) is not None


@pytest.mark.parametrize(("cloud", "shape"), ALL_SHAPES, ids=lambda v: getattr(v, "name", v))
def test_every_price_is_a_positive_decimal_with_a_date_and_a_source(
    cloud: str, shape: InstanceType
) -> None:
    for price in (shape.usd_per_hour, *shape.region_prices.values()):
        assert isinstance(price, Decimal)
        assert price > 0
    assert date(2023, 1, 1) <= shape.price_as_of <= date.today()
    assert shape.price_region in shape.price_source  # the source says where it was read
    assert shape.price_region in shape.regions


@pytest.mark.parametrize(("cloud", "shape"), ALL_SHAPES, ids=lambda v: getattr(v, "name", v))
def test_every_shape_is_plausible_for_its_gpu(cloud: str, shape: InstanceType) -> None:
    assert shape.gpu_memory_gib == NOMINAL_MEMORY_GIB[shape.gpu_model]
    assert shape.gpu_count in {1, 2, 4, 8, 16}
    assert shape.vcpus >= shape.gpu_count
    assert shape.ram_gib >= 2 * shape.vcpus


@pytest.mark.parametrize(("cloud", "shape"), ALL_SHAPES, ids=lambda v: getattr(v, "name", v))
def test_every_shape_lists_exactly_the_workload_types_its_gpus_can_host(
    cloud: str, shape: InstanceType
) -> None:
    hostable = {
        w.name
        for w in GPU_WORKLOADS
        if why_cannot_host(w, shape.gpu_model, shape.gpu_count) is None
    }
    assert set(shape.workload_types) == hostable


def test_every_gpu_workload_type_names_a_gpu_class_the_catalog_maps() -> None:
    assert {w.gpu_model for w in GPU_WORKLOADS} <= set(GPU_CLASS_MODELS)


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_the_catalog_knows_exactly_the_billing_regions_of_each_cloud(cloud: str) -> None:
    billed = {name for name, region in REGIONS.items() if region.cloud == cloud}
    assert set(SHIPPED.clouds[cloud].regions) == billed


# --- the picker on the shipped data (what docs/pricing.md promises) ------------------------


@pytest.mark.parametrize(
    ("cloud", "region", "expected"),
    [
        ("aws", "us-east-1", "p5.48xlarge"),
        ("gcp", "us-central1", "a3-highgpu-8g"),
        ("azure", "eastus", "Standard_ND96isr_H100_v5"),
    ],
)
def test_h100_workloads_land_on_the_8_gpu_h100_shape(cloud: str, region: str, expected: str):
    assert pick(cloud, region, "GPU_XLARGE_8").name == expected


def test_a_region_without_the_shape_is_refused_naming_where_it_is_offered() -> None:
    with pytest.raises(NotOfferedInRegion) as refused:
        pick("aws", "us-west-1", "GPU_XLARGE_8")
    message = str(refused.value)
    assert "us-west-1" in message
    assert "p5.48xlarge" in message
    assert "us-east-1" in message


def test_a_workload_no_node_of_the_cloud_can_hold_is_refused_with_the_largest_node() -> None:
    with pytest.raises(NoShapeFits) as refused:
        pick("azure", "eastus", "MULTIGPU_MEDIUM")
    assert "the most on one azure node is 2, on Standard_NV72ads_A10_v5" in str(refused.value)


def test_a_gpu_the_cloud_does_not_offer_is_refused() -> None:
    with pytest.raises(NoShapeFits, match="gcp catalog has none of those GPUs"):
        pick("gcp", "us-central1", "GPU_SMALL")


def test_40gb_a100_shapes_never_host_an_80gb_workload() -> None:
    for cloud, region in (("aws", "us-east-1"), ("gcp", "us-central1"), ("azure", "eastus")):
        for found in candidates(cloud, region, "GPU_LARGE"):
            assert found.instance_type.gpu_model is GpuModel.A100_80GB


def test_reading_the_package_loads_no_file_until_first_use() -> None:
    code = (
        "import deploy.catalog as c, deploy.catalog.instances as i; "
        "assert i.packaged_catalog.cache_info().currsize == 0"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- the picker's rules, on a small catalog of our own -------------------------------------


def toml_value(value: object) -> str:
    if isinstance(value, bool | int | Decimal):
        return str(value).lower() if isinstance(value, bool) else str(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


def shape(name: str, gpu: str, count: int, usd: str, regions: list[str], **extra: object) -> dict:
    model = GpuModel(gpu)
    fields: dict[str, object] = {
        "name": name,
        "family": name.split(".")[0],
        "gpu_model": gpu,
        "gpu_count": count,
        "gpu_memory_gib": NOMINAL_MEMORY_GIB[model],
        "vcpus": 8 * count,
        "ram_gib": 64 * count,
        "regions": regions,
        "usd_per_hour": Decimal(usd),
        "workload_types": [
            w.name for w in GPU_WORKLOADS if why_cannot_host(w, model, count) is None
        ],
    }
    return fields | extra


def write_catalog(directory: Path, shapes: list[dict], cloud: str = "aws", **top: object) -> Path:
    header: dict[str, object] = {
        "cloud": cloud,
        "regions": ["us-east-1", "us-west-1", "eu-west-1"],
        "price_region": "us-east-1",
        "price_as_of": date(2024, 6, 1),
        "price_source": "test figures, us-east-1",
    } | top
    lines = [f"{key} = {toml_value(value)}" for key, value in header.items()]
    for entry in shapes:
        lines.append("[[instance_types]]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in entry.items())
    (directory / f"{cloud}.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


EVERYWHERE = ["us-east-1", "us-west-1", "eu-west-1"]


@pytest.fixture
def small(tmp_path: Path) -> Catalog:
    shapes = [
        shape("big.8x", "A100-80GB", 8, "40", EVERYWHERE),
        shape("mid.4x", "A100-80GB", 4, "20", ["us-east-1", "eu-west-1"]),
        shape("one.1x", "A100-80GB", 1, "5", ["us-east-1"]),
        shape("tie.2x", "A100-80GB", 2, "20", ["us-east-1"]),
        shape("a10.1x", "A10G", 1, "1", EVERYWHERE),
        shape("old.8x", "A100-40GB", 8, "30", EVERYWHERE),
    ]
    return load_catalog(write_catalog(tmp_path, shapes))


def test_the_cheapest_shape_with_enough_gpus_wins(small: Catalog) -> None:
    assert pick("aws", "us-east-1", "GPU_LARGE", catalog=small).name == "one.1x"
    assert pick("aws", "us-east-1", "GPU_LARGE_2", catalog=small).name == "tie.2x"
    assert pick("aws", "us-east-1", "GPU_LARGE_4", catalog=small).name == "mid.4x"
    assert pick("aws", "us-west-1", "GPU_LARGE", catalog=small).name == "big.8x"


def test_gpus_needed_above_one_replica_asks_for_a_bigger_node(small: Catalog) -> None:
    assert pick("aws", "us-east-1", "GPU_LARGE", 3, catalog=small).name == "mid.4x"


def test_candidates_come_cheapest_first_and_ties_go_to_fewer_gpus(small: Catalog) -> None:
    found = candidates("aws", "us-east-1", "GPU_LARGE_2", catalog=small)
    assert [c.name for c in found] == ["tie.2x", "mid.4x", "big.8x"]
    assert all(isinstance(c, Candidate) and c.region == "us-east-1" for c in found)
    assert [c.usd_per_hour for c in found] == [Decimal(20), Decimal(20), Decimal(40)]


def test_candidates_across_regions_keep_region_order_and_skip_regions_without_one(
    small: Catalog,
) -> None:
    found = candidates_across(
        "aws", ["us-west-1", "us-east-1", "us-west-1"], "GPU_LARGE_4", catalog=small
    )
    assert [(c.region, c.name) for c in found] == [
        ("us-west-1", "big.8x"),
        ("us-east-1", "mid.4x"),
        ("us-east-1", "big.8x"),
    ]
    only_east = candidates_across("aws", ["eu-west-1", "us-west-1"], "GPU_LARGE", catalog=small)
    assert [(c.region, c.name) for c in only_east][:2] == [
        ("eu-west-1", "mid.4x"),
        ("eu-west-1", "big.8x"),
    ]


def test_candidates_across_regions_none_of_which_offer_one_are_refused(tmp_path: Path) -> None:
    catalog = load_catalog(
        write_catalog(tmp_path, [shape("one.1x", "A100-80GB", 1, "5", ["us-east-1"])])
    )
    with pytest.raises(NotOfferedInRegion, match="us-west-1, eu-west-1"):
        candidates_across("aws", ["us-west-1", "eu-west-1"], "GPU_LARGE", catalog=catalog)
    with pytest.raises(UnknownRegion, match="no aws region given"):
        candidates_across("aws", [], "GPU_LARGE", catalog=catalog)
    with pytest.raises(TypeError):
        candidates_across("aws", "us-east-1", "GPU_LARGE", catalog=catalog)


def test_a_pinned_shape_is_used_even_when_a_cheaper_one_fits(small: Catalog) -> None:
    chosen = pick("aws", "us-east-1", "GPU_LARGE", pinned="big.8x", catalog=small)
    assert chosen.name == "big.8x"
    assert chosen.usd_per_hour == Decimal(40)
    pinned_across = candidates_across(
        "aws", ["us-west-1", "us-east-1"], "GPU_LARGE", pinned="mid.4x", catalog=small
    )
    assert [(c.region, c.name) for c in pinned_across] == [("us-east-1", "mid.4x")]


def test_a_pinned_shape_not_offered_in_the_region_is_refused(small: Catalog) -> None:
    with pytest.raises(NotOfferedInRegion) as refused:
        pick("aws", "us-west-1", "GPU_LARGE", pinned="one.1x", catalog=small)
    assert str(refused.value) == (
        "pinned instance type one.1x is not offered in us-west-1; it is in us-east-1"
    )


def test_a_pinned_shape_with_too_few_gpus_is_refused(small: Catalog) -> None:
    with pytest.raises(PinnedCannotServe) as refused:
        pick("aws", "us-east-1", "GPU_LARGE_8", pinned="mid.4x", catalog=small)
    assert str(refused.value) == (
        "pinned instance type mid.4x cannot host GPU_LARGE_8: "
        "it has 4 GPU(s) on one node; GPU_LARGE_8 needs 8"
    )


def test_a_pinned_shape_with_the_wrong_gpu_is_refused(small: Catalog) -> None:
    with pytest.raises(PinnedCannotServe, match="has A100-40GB GPUs; GPU_LARGE runs on A100-80GB"):
        pick("aws", "us-east-1", "GPU_LARGE", pinned="old.8x", catalog=small)


def test_a_pinned_shape_its_entry_does_not_list_is_refused(tmp_path: Path) -> None:
    narrowed = shape("l4.1x", "L4", 1, "1", EVERYWHERE, workload_types=[])
    catalog = load_catalog(write_catalog(tmp_path, [narrowed]))
    with pytest.raises(PinnedCannotServe, match="is not listed for GPU_MEDIUM"):
        pick("aws", "us-east-1", "GPU_MEDIUM", pinned="l4.1x", catalog=catalog)
    with pytest.raises(NoShapeFits, match=r"l4\.1x would fit, but their entries do not list"):
        pick("aws", "us-east-1", "GPU_MEDIUM", catalog=catalog)


def test_an_unknown_pinned_shape_is_refused_with_the_known_ones(small: Catalog) -> None:
    with pytest.raises(UnknownInstanceType, match=r"'p9\.huge' is not in the aws catalog; known"):
        pick("aws", "us-east-1", "GPU_LARGE", pinned="p9.huge", catalog=small)


def test_no_node_with_enough_gpus_is_refused(small: Catalog) -> None:
    with pytest.raises(NoShapeFits, match=r"the most on one aws node is 8, on big\.8x"):
        pick("aws", "us-east-1", "GPU_LARGE", 16, catalog=small)


@pytest.mark.parametrize(
    ("args", "error", "phrase"),
    [
        (("gcp", "us-east-1", "GPU_LARGE"), UnknownCloud, "cloud 'gcp' has no instance catalog"),
        (("local", "local", "GPU_LARGE"), UnknownCloud, "'local'"),
        (("aws", "eastus", "GPU_LARGE"), UnknownRegion, "region 'eastus' is not one of aws's"),
        (("aws", "us-east-1", "GPU_HUGE"), UnsupportedWorkload, "unknown workload_type"),
        (("aws", "us-east-1", "CPU"), UnsupportedWorkload, "runs on CPU"),
        (("aws", "us-east-1", "GPU_LARGE_8", 2), UnsupportedWorkload, "gpus_needed=2"),
    ],
)
def test_bad_requests_are_refused_with_a_typed_error_naming_the_reason(
    small: Catalog, args: tuple, error: type[ShapeRefused], phrase: str
) -> None:
    with pytest.raises(error, match=phrase) as refused:
        pick(*args, catalog=small)
    assert isinstance(refused.value, ValueError)  # the control plane answers 400


def test_a_regional_figure_beats_the_reference_price_and_says_where_it_was_taken(
    tmp_path: Path,
) -> None:
    shapes = [
        shape("a.1x", "A10G", 1, "1.00", EVERYWHERE, region_prices={"eu-west-1": Decimal("1.30")}),
        shape("b.1x", "A10G", 1, "1.10", EVERYWHERE),
    ]
    catalog = load_catalog(write_catalog(tmp_path, shapes))
    east = pick("aws", "us-east-1", "GPU_MEDIUM", catalog=catalog)
    assert (east.name, east.usd_per_hour, east.price_region) == (
        "a.1x",
        Decimal("1.00"),
        "us-east-1",
    )
    europe = candidates("aws", "eu-west-1", "GPU_MEDIUM", catalog=catalog)
    assert [(c.name, c.usd_per_hour, c.price_region) for c in europe] == [
        ("b.1x", Decimal("1.10"), "us-east-1"),
        ("a.1x", Decimal("1.30"), "eu-west-1"),
    ]


# --- the loader refuses bad data ------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "phrase"),
    [
        ({"gpu_memory_gib": 40}, "A100-80GB has 80 GiB per GPU, not 40"),
        ({"usd_per_hour": Decimal(0)}, "greater than 0"),
        ({"workload_types": ["GPU_XLARGE_8"]}, "cannot serve GPU_XLARGE_8: it has A100-80GB"),
        ({"workload_types": ["GPU_LARGE_8"]}, "needs 8"),
        ({"workload_types": ["GPU_NOPE"]}, "unknown workload type 'GPU_NOPE'"),
        ({"regions": ["us-east-1", "ap-south-1"]}, "regions ['ap-south-1'] are not aws"),
        ({"regions": ["us-west-1"]}, "priced in ['us-east-1'], which it is not offered in"),
        ({"gpu_model": "B200"}, "gpu_model"),
        ({"price_source": ""}, "price_source"),
    ],
)
def test_a_bad_entry_is_refused_naming_the_file(tmp_path: Path, bad: dict, phrase: str) -> None:
    write_catalog(tmp_path, [shape("x.4x", "A100-80GB", 4, "9", EVERYWHERE) | bad])
    with pytest.raises(CatalogError, match=r"aws\.toml") as refused:
        load_catalog(tmp_path)
    assert phrase in str(refused.value)


def test_a_file_named_after_another_cloud_is_refused(tmp_path: Path) -> None:
    write_catalog(tmp_path, [shape("x.1x", "A10G", 1, "1", EVERYWHERE)])
    (tmp_path / "aws.toml").rename(tmp_path / "gcp.toml")
    with pytest.raises(CatalogError, match=r"gcp\.toml: holds cloud 'aws'"):
        load_catalog(tmp_path)


def test_an_empty_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no catalog files"):
        load_catalog(tmp_path)


def test_a_float_price_is_refused() -> None:
    fields = shape("x.1x", "A10G", 1, "1", EVERYWHERE) | {
        "usd_per_hour": 1.5,
        "price_region": "us-east-1",
        "price_as_of": date(2024, 6, 1),
        "price_source": "test",
    }
    with pytest.raises(ValidationError, match=r"float 1\.5 is not accepted for money"):
        InstanceType.model_validate(fields)
