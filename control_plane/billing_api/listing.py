"""What every billing listing shares: who may see which workspaces, ISO 8601 time ranges,
and the JSON or CSV rendering of rows (Decimals as strings, never floats)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from control_plane.auth import Caller
from control_plane.errors import InvalidParameter, PermissionDenied


@dataclass(frozen=True)
class Scope:
    """The workspaces a listing may show: one, or (account admins) every one of the account."""

    account_id: str
    workspace_id: str | None  # None: every workspace of the account

    def clause(self, account_column: Any, workspace_column: Any) -> list[Any]:
        """SQLAlchemy filters restricting a table to this scope."""
        filters = [account_column == self.account_id]
        if self.workspace_id is not None:
            filters.append(workspace_column == self.workspace_id)
        return filters


def billing_scope(caller: Caller, workspace_id: str | None) -> Scope:
    """Workspace admins see their workspace; account admins see any (or all) of the account."""
    if caller.is_account_admin:
        return Scope(caller.account_id, workspace_id)
    if not caller.is_workspace_admin:
        raise PermissionDenied("billing data is for workspace and account admins")
    if workspace_id not in (None, caller.workspace_id):
        raise PermissionDenied("workspace admins see their own workspace's billing only")
    return Scope(caller.account_id, caller.workspace_id)


def parse_time(value: str | None, name: str) -> datetime | None:
    """ISO 8601 with a zone (e.g. 2026-11-26T14:00:00Z); a date alone means its midnight UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidParameter(
            f"{name} must be ISO 8601, e.g. 2026-11-26T14:00:00Z; got {value!r}"
        ) from None
    if parsed.tzinfo is None:
        if len(value) > 10:
            raise InvalidParameter(f"{name} needs a time zone, e.g. {value}Z")
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def time_range(start: str | None, end: str | None) -> tuple[datetime | None, datetime | None]:
    start_time, end_time = parse_time(start, "start_time"), parse_time(end, "end_time")
    if start_time and end_time and end_time <= start_time:
        raise InvalidParameter("end_time must be after start_time")
    return start_time, end_time


def plain(value: Any) -> Any:
    """A JSON-safe value: Decimals as exact strings, times in ISO 8601 (Z for UTC)."""
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")  # exact, no exponent, no storage padding
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def wants_csv(request: Request) -> bool:
    if request.query_params.get("format") == "csv":
        return True
    return "text/csv" in request.headers.get("accept", "")


def listing(
    request: Request, key: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]
) -> Response:
    """`{key: [...]}` as JSON, or CSV (`Accept: text/csv` or `?format=csv`) with `columns`;
    nested values become JSON text in their cell."""
    if not wants_csv(request):
        return JSONResponse({key: [plain(row) for row in rows]})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        cells = []
        for column in columns:
            value = plain(row.get(column))
            cells.append(json.dumps(value) if isinstance(value, dict | list) else value)
        writer.writerow(cells)
    filename = f"{key}.csv"
    return Response(
        out.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
