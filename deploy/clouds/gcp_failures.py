"""Which GCP answers mean "this shape cannot be had here now": capacity and quota errors,
whether a call answers them at once (an HTTP error whose `errors[].reason` says so), a
long-running operation ends with them (`Operation.error.errors[].code`), or a managed
instance group reports them later for the instances it could not create (`listErrors`).
Each becomes a `ShapeFailure` carrying GCP's own message; anything else is not a reason to
fail over.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from deploy.clouds.base import ShapeFailure

# `Operation.error.errors[].code` and `listErrors` `error.code` for capacity and quota.
CAPACITY_CODES = frozenset(
    {
        "ZONE_RESOURCE_POOL_EXHAUSTED",  # the zone has none of that machine type now
        "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
        "QUOTA_EXCEEDED",  # e.g. NVIDIA_L4_GPUS or CPUS of the region
    }
)
# `error.errors[].reason` of an HTTP error answered at once for the same refusals.
CAPACITY_REASONS = frozenset({"quotaExceeded", "insufficientCapacity"})
RECENT_S = 900.0  # how old a MIG's instance error may be and still explain missing instances


def failure_from_codes(
    errors: Iterable[tuple[str, str]], region: str, machine_type: str
) -> ShapeFailure | None:
    """The first capacity or quota refusal among `(code, message)` pairs, e.g. the errors
    of a DONE operation; None when there is none."""
    for code, message in errors:
        if code in CAPACITY_CODES:
            return ShapeFailure(
                region=region, instance_type=machine_type, code=code, message=message
            )
    return None


def failure_from_http(
    errors: Iterable[Mapping[str, Any]], message: str, region: str, machine_type: str
) -> ShapeFailure | None:
    """The refusal in an HTTP error's `errors` list (`GoogleAPICallError.errors`), or None
    when it is not about capacity or quota."""
    for error in errors:
        reason = str(error.get("reason", ""))
        if reason in CAPACITY_REASONS:
            text = str(error.get("message") or message)
            return ShapeFailure(
                region=region, instance_type=machine_type, code=reason, message=text
            )
    return None


def failure_from_instance_errors(
    items: Iterable[Mapping[str, str]],
    since: str,
    region: str,
    machine_type: str,
    now: float | None = None,
) -> ShapeFailure | None:
    """The most recent instance error of a MIG (`listErrors`, as dicts with `timestamp`,
    `code` and `message`) when it is a capacity or quota refusal reported after `since` (the
    group's creation) and within the last `RECENT_S`. listErrors keeps errors and never
    successes, so an old refusal says nothing of a later scale-up; a group GCP cannot fill
    goes on retrying, and failing, and so has recent ones."""
    cutoff = max(_instant(since), (time.time() if now is None else now) - RECENT_S)
    recent = [i for i in items if _instant(i.get("timestamp", "")) >= cutoff]
    if not recent:
        return None
    latest = max(recent, key=lambda i: _instant(i.get("timestamp", "")))
    return failure_from_codes(
        [(latest.get("code", ""), latest.get("message", ""))], region, machine_type
    )


def _instant(timestamp: str) -> float:
    """Seconds since the epoch of an RFC 3339 timestamp (GCP writes offsets like -07:00,
    so the strings themselves do not sort); 0 when absent or unreadable."""
    if not timestamp:
        return 0.0
    try:
        return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
