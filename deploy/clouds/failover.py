"""The part of `NodeGroups.ensure` every cloud shares: what to do with the group an earlier
call left, and the walk through the candidate shapes.

A group found under the spec's name is kept (scaled to the spec's count) when its shape is
still a candidate and the cloud has not refused it; otherwise it is released and the walk
starts after its shape (or from the first candidate when its shape is no candidate any
more). Each candidate is tried in order; a capacity or quota refusal releases what was
created for it and moves on; when none is left, `CapacityError` carries every refusal.
The clouds supply the calls (`Existing.keep`, `create`, `release`); nothing here talks to
one.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from deploy.catalog import Candidate
from deploy.clouds.base import (
    CapacityError,
    NodeGroup,
    NodeGroupSpec,
    ShapeFailure,
    ShapeNotOffered,
)


@dataclass(frozen=True)
class Existing:
    """The group an earlier call created under the spec's name, as the cloud reports it."""

    region: str
    instance_type: str
    refused: ShapeFailure | None  # the cloud could not launch its shape (no instances)
    keep: Callable[[], NodeGroup]  # converge it to the spec (its count) and report it


def ensure_with_failover(
    spec: NodeGroupSpec,
    existing: Existing | None,
    *,
    create: Callable[[Candidate], NodeGroup | ShapeFailure],
    release: Callable[[str], None],
) -> NodeGroup:
    """`create(candidate)` makes the group of one shape (or says why the cloud refused
    it); `release(region)` removes what was made for the spec's name in that region."""
    failures: list[ShapeFailure] = []
    start = 0
    if existing is not None:
        shape = (existing.region, existing.instance_type)
        index = next(
            (i for i, c in enumerate(spec.candidates) if (c.region, c.name) == shape), None
        )
        if index is not None and existing.refused is None:
            return existing.keep()
        if existing.refused is not None:
            failures.append(existing.refused)
        # Refused, or no longer a candidate (the entity's workload changed): replace it.
        start = 0 if index is None else index + 1
        release(existing.region)
    for candidate in spec.candidates[start:]:
        outcome = create(candidate)
        if isinstance(outcome, NodeGroup):
            return outcome.model_copy(update={"failures": tuple(failures)})
        failures.append(outcome)
        release(candidate.region)
    raise CapacityError(tuple(failures))


def check_offered(
    spec: NodeGroupSpec,
    *,
    cloud: str,
    installation_id: str,
    configured: Collection[str],
    what: str,
) -> None:
    """Refuse, before any cloud call, a spec of another installation, a shape of another
    cloud, or a region this cloud has no `what` (an image, a subnet) configured for."""
    if spec.installation_id != installation_id:
        raise ShapeNotOffered(
            f"spec of installation {spec.installation_id}, provider of {installation_id}"
        )
    for candidate in spec.candidates:
        if candidate.cloud != cloud:
            raise ShapeNotOffered(f"{candidate.name} is a {candidate.cloud} shape, not {cloud}")
        if candidate.region not in configured:
            raise ShapeNotOffered(
                f"region {candidate.region} has no {what} configured (configured: "
                f"{', '.join(configured)})"
            )
