"""Which Azure answers mean "this shape cannot be had here now": capacity and quota errors,
whether Resource Manager refuses the scale set's PUT at once (409 `SkuNotAvailable`, 409
`OperationNotAllowed` over a cores quota) or accepts it and the long-running operation ends
`Failed` (`AllocationFailed`, ...), and as a failed scale set's instance view reports them
later (status `ProvisioningState/failed/<code>`). Either becomes a `ShapeFailure` carrying
Azure's own message; anything else is not a reason to fail over.

Pure: reads the ARM error JSON (`{"code", "message", "details": [...]}`), imports no SDK.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from deploy.clouds.base import ShapeFailure

# Compute Resource Provider codes for "no capacity for this size here now" and "the size is
# not offered to this subscription here", whatever the message says.
CAPACITY_CODES = frozenset(
    {
        "AllocationFailed",  # the region's clusters have none of that size now
        "ZonalAllocationFailed",  # the same, in the requested zone
        "OverconstrainedAllocationRequest",  # no cluster satisfies size + constraints
        "OverconstrainedZonalAllocationRequest",
        "SkuNotAvailable",  # size restricted for the subscription or out of capacity
        "QuotaExceeded",  # regional or per-family vCPU quota
    }
)
# Codes that are about quota only when the message says so: CRP words a cores-quota refusal
# "Operation could not be completed as it results in exceeding approved standardNCADSA100v4Family
# Cores quota", and uses the same code for unrelated refusals.
QUOTA_WORDED_CODES = frozenset({"OperationNotAllowed"})
_QUOTA_WORDS = re.compile(r"\bquota\b", re.I)


def failure_from_error(
    error: Mapping[str, Any], region: str, instance_type: str
) -> ShapeFailure | None:
    """The refusal in an ARM error object (a 4xx body's or a failed operation's `error`),
    looked for in the error and its nested `details`; None when none is about capacity or
    quota."""
    for code, message in _codes(error):
        quota = code in QUOTA_WORDED_CODES and _QUOTA_WORDS.search(message)
        if code in CAPACITY_CODES or quota:
            return ShapeFailure(
                region=region, instance_type=instance_type, code=code, message=message
            )
    return None


def failure_from_statuses(
    statuses: Iterable[Mapping[str, Any]], region: str, instance_type: str
) -> ShapeFailure | None:
    """The refusal in a scale set's instance view: a status `ProvisioningState/failed/<code>`
    whose code is about capacity or quota."""
    for status in statuses:
        parts = str(status.get("code", "")).split("/")
        if len(parts) == 3 and parts[:2] == ["ProvisioningState", "failed"]:
            message = str(status.get("message") or status.get("displayStatus") or "")
            failure = failure_from_error(
                {"code": parts[2], "message": message}, region, instance_type
            )
            if failure is not None:
                return failure
    return None


def _codes(error: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    yield str(error.get("code") or ""), str(error.get("message") or "")
    for detail in error.get("details") or ():
        if isinstance(detail, Mapping):
            yield from _codes(detail)
