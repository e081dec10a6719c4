"""Choosing the instance type a replica runs on: pure functions over the catalog.

A replica that needs N GPUs lands on one node with at least N GPUs of a part its workload
type allows (`deploy.catalog.gpus`). Among the shapes a region offers, the cheapest on-demand
price wins (ties: fewer GPUs, then fewer vCPUs, then the name); an operator may pin one
instance type instead. `candidates` lists the fitting shapes of one region in price order
and `candidates_across` those of an ordered list of regions (region order first), for a
provider to fail over through on capacity errors.

Every refusal is a `ShapeRefused` (a `ValueError`) whose message names the reason, raised
before any cloud call: the control plane answers it with a 400.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from pydantic import BaseModel, ConfigDict

from deploy.catalog.gpus import allowed_models, why_cannot_host
from deploy.catalog.instances import Catalog, CloudCatalog, InstanceType, packaged_catalog
from deploy.workload_types import WorkloadType, workload_type


class ShapeRefused(ValueError):
    """No instance type can be chosen for the request; the message says why."""


class UnknownCloud(ShapeRefused):
    """The cloud has no catalog (`local` included: it provisions nothing)."""


class UnknownRegion(ShapeRefused):
    """The region is not one of the cloud's regions in the catalog."""


class UnknownInstanceType(ShapeRefused):
    """The pinned instance type is not in the cloud's catalog."""


class UnsupportedWorkload(ShapeRefused):
    """The workload type is unknown, runs on CPU, or `gpus_needed` cannot hold one replica."""


class NoShapeFits(ShapeRefused):
    """No instance type of the cloud, in any region, hosts the workload on one node."""


class NotOfferedInRegion(ShapeRefused):
    """Shapes that fit exist, but not in the region(s) asked for (or the pinned one is not)."""


class PinnedCannotServe(ShapeRefused):
    """The pinned instance type has the wrong GPU part or too few GPUs for the workload."""


class Candidate(BaseModel):
    """One instance type in one region, with the price the choice was made on."""

    model_config = ConfigDict(frozen=True)

    cloud: str
    region: str
    instance_type: InstanceType
    usd_per_hour: Decimal
    price_region: str  # where the figure was taken: `region`, or the type's reference region

    @property
    def name(self) -> str:
        return self.instance_type.name


def pick(
    cloud: str,
    region: str,
    workload: str,
    gpus_needed: int | None = None,
    *,
    pinned: str | None = None,
    catalog: Catalog | None = None,
) -> Candidate:
    """The cheapest shape in `region` that hosts one replica of `workload` needing
    `gpus_needed` GPUs (default: the workload type's devices per replica), or `pinned`
    after checking that it fits and is offered there."""
    return candidates(cloud, region, workload, gpus_needed, pinned=pinned, catalog=catalog)[0]


def candidates(
    cloud: str,
    region: str,
    workload: str,
    gpus_needed: int | None = None,
    *,
    pinned: str | None = None,
    catalog: Catalog | None = None,
) -> tuple[Candidate, ...]:
    """Every shape in `region` that fits, cheapest first (never empty; refusals raise).
    With `pinned`, that shape alone."""
    return candidates_across(cloud, [region], workload, gpus_needed, pinned=pinned, catalog=catalog)


def candidates_across(
    cloud: str,
    regions: Sequence[str],
    workload: str,
    gpus_needed: int | None = None,
    *,
    pinned: str | None = None,
    catalog: Catalog | None = None,
) -> tuple[Candidate, ...]:
    """The fitting shapes of each region in `regions` order, cheapest first within a region;
    regions offering none are skipped. Refused when no region offers one."""
    if isinstance(regions, str):
        raise TypeError(f"regions is a sequence of region ids, not the string {regions!r}")
    cloud_catalog, spec, needed = _resolve(catalog, cloud, workload, gpus_needed)
    ordered = list(dict.fromkeys(regions))
    if not ordered:
        raise UnknownRegion(f"no {cloud} region given to place {spec.name} in")
    _check_regions(cloud_catalog, ordered)
    fits = _fitting(cloud_catalog, spec, needed, pinned)
    found = [
        candidate
        for region in ordered
        for candidate in _ranked(cloud, region, [it for it in fits if region in it.regions])
    ]
    if not found:
        raise NotOfferedInRegion(_not_offered(cloud, ordered, spec, needed, fits, pinned))
    return tuple(found)


def _resolve(
    catalog: Catalog | None, cloud: str, workload: str, gpus_needed: int | None
) -> tuple[CloudCatalog, WorkloadType, int]:
    clouds = (catalog or packaged_catalog()).clouds
    if cloud not in clouds:
        known = ", ".join(sorted(clouds))
        raise UnknownCloud(f"cloud {cloud!r} has no instance catalog; catalogued: {known}")
    try:
        spec = workload_type(workload)
    except ValueError as exc:
        raise UnsupportedWorkload(str(exc)) from None
    if spec.device != "cuda":
        raise UnsupportedWorkload(
            f"workload type {spec.name} runs on CPU; the GPU instance catalog does not place it"
        )
    needed = spec.devices_per_replica if gpus_needed is None else gpus_needed
    if needed < spec.devices_per_replica:
        raise UnsupportedWorkload(
            f"{spec.name} spans {spec.devices_per_replica} GPU(s) per replica; "
            f"gpus_needed={needed} cannot hold one"
        )
    return clouds[cloud], spec, needed


def _check_regions(cloud_catalog: CloudCatalog, regions: Sequence[str]) -> None:
    for region in regions:
        if region not in cloud_catalog.regions:
            known = ", ".join(cloud_catalog.regions)
            raise UnknownRegion(
                f"region {region!r} is not one of {cloud_catalog.cloud}'s regions in the catalog; "
                f"known: {known}"
            )


def _fitting(
    cloud_catalog: CloudCatalog, spec: WorkloadType, needed: int, pinned: str | None
) -> list[InstanceType]:
    """The cloud's shapes, in any region, that host one replica; refusal when none does."""
    cloud = cloud_catalog.cloud
    if pinned is not None:
        shape = cloud_catalog.instance_type(pinned)
        if shape is None:
            known = ", ".join(it.name for it in cloud_catalog.instance_types)
            raise UnknownInstanceType(
                f"pinned instance type {pinned!r} is not in the {cloud} catalog; known: {known}"
            )
        reason = why_cannot_host(spec, shape.gpu_model, shape.gpu_count, needed)
        if reason is None and not shape.serves(spec.name):
            reason = f"is not listed for {spec.name} in the {cloud} catalog"
        if reason is not None:
            raise PinnedCannotServe(
                f"pinned instance type {pinned} cannot host {spec.name}: it {reason}"
            )
        return [shape]
    fits = [it for it in cloud_catalog.instance_types if _hosts(it, spec, needed)]
    if not fits:
        raise NoShapeFits(_none_fits(cloud_catalog, spec, needed))
    return fits


def _hosts(shape: InstanceType, spec: WorkloadType, needed: int) -> bool:
    return shape.serves(spec.name) and shape.gpu_count >= needed


def _ranked(cloud: str, region: str, shapes: list[InstanceType]) -> list[Candidate]:
    priced = []
    for shape in shapes:
        price, price_region = shape.price_in(region)
        priced.append(
            Candidate(
                cloud=cloud,
                region=region,
                instance_type=shape,
                usd_per_hour=price,
                price_region=price_region,
            )
        )
    return sorted(
        priced,
        key=lambda c: (c.usd_per_hour, c.instance_type.gpu_count, c.instance_type.vcpus, c.name),
    )


def _none_fits(cloud_catalog: CloudCatalog, spec: WorkloadType, needed: int) -> str:
    cloud = cloud_catalog.cloud
    parts = sorted(allowed_models(spec))
    head = f"no {cloud} instance type hosts {spec.name} ({needed}× {'/'.join(parts)} on one node)"
    same_parts = [it for it in cloud_catalog.instance_types if it.gpu_model in parts]
    if not same_parts:
        return f"{head}: the {cloud} catalog has none of those GPUs"
    largest = max(same_parts, key=lambda it: it.gpu_count)
    if largest.gpu_count >= needed:  # an operator's catalog dropped the workload from them
        big_enough = ", ".join(it.name for it in same_parts if it.gpu_count >= needed)
        return f"{head}: {big_enough} would fit, but their entries do not list {spec.name}"
    return f"{head}: the most on one {cloud} node is {largest.gpu_count}, on {largest.name}"


def _not_offered(
    cloud: str,
    regions: Sequence[str],
    spec: WorkloadType,
    needed: int,
    fits: list[InstanceType],
    pinned: str | None,
) -> str:
    asked = ", ".join(regions)
    where = ", ".join(sorted({region for it in fits for region in it.regions}))
    if pinned is not None:
        return f"pinned instance type {pinned} is not offered in {asked}; it is in {where}"
    names = ", ".join(it.name for it in fits)
    return (
        f"no {cloud} instance type offered in {asked} hosts {spec.name} "
        f"({needed} GPU(s) on one node); those that do ({names}) are offered in {where}"
    )
