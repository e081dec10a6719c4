"""Which AWS answers mean "this shape cannot be had here now": capacity and quota errors,
whether an API call returns them (EC2 error codes) or an Auto Scaling group reports them
later in a failed scaling activity (the group exists, its launches fail). Either becomes a
`ShapeFailure` carrying AWS's own message; anything else is not a reason to fail over.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from deploy.clouds.base import ShapeFailure

# Error codes of EC2 (RunInstances, CreateFleet) and Auto Scaling for capacity and quota.
CAPACITY_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",  # the AZ has none of that type now
        "InsufficientCapacity",
        "InstanceLimitExceeded",  # per-type instance quota
        "VcpuLimitExceeded",  # on-demand vCPU quota of the family
        "Unsupported",  # the type is not offered in the AZ
        "LimitExceeded",  # Auto Scaling group / launch template quota
    }
)
# How a failed scaling activity's StatusMessage words the same refusals.
_ACTIVITY_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("InsufficientInstanceCapacity", re.compile(r"do not have sufficient .* capacity", re.I)),
    ("VcpuLimitExceeded", re.compile(r"vCPU (capacity|limit)", re.I)),
    ("InstanceLimitExceeded", re.compile(r"instance limit|InstanceLimitExceeded", re.I)),
    ("Unsupported", re.compile(r"not supported in your requested Availability Zone", re.I)),
)


def failure_from_error(
    error: Mapping[str, Any], region: str, instance_type: str
) -> ShapeFailure | None:
    """The refusal in a botocore `ClientError.response["Error"]`, or None when the error is
    not about capacity or quota."""
    code = str(error.get("Code", ""))
    if code not in CAPACITY_CODES:
        return None
    return ShapeFailure(
        region=region, instance_type=instance_type, code=code, message=str(error.get("Message"))
    )


def failure_from_activities(
    activities: Iterable[Mapping[str, Any]], since: datetime, region: str, instance_type: str
) -> ShapeFailure | None:
    """The most recent scaling activity of the group (started at or after `since`, its
    creation) when it failed for capacity or quota."""
    recent = [a for a in activities if a.get("StartTime") is None or a["StartTime"] >= since]
    if not recent:
        return None
    latest = max(recent, key=lambda a: a.get("StartTime") or since)
    if latest.get("StatusCode") != "Failed":
        return None
    message = str(latest.get("StatusMessage") or latest.get("Description") or "")
    for code, pattern in _ACTIVITY_PATTERNS:
        if pattern.search(message):
            return ShapeFailure(
                region=region, instance_type=instance_type, code=code, message=message
            )
    return None
