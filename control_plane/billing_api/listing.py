"""What every billing listing shares: who may see which workspaces, ISO 8601 time ranges,
and the JSON or CSV rendering of typed rows (`schemas`: Decimals as strings, never
floats)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, get_args

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

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


def wants_csv(request: Request) -> bool:
    if request.query_params.get("format") == "csv":
        return True
    return "text/csv" in request.headers.get("accept", "")


CSV: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "or CSV"}
}


def listing(request: Request, page: BaseModel) -> Response:
    """`page` — a model with one field, a list of rows — as JSON, or as CSV (`Accept:
    text/csv` or `?format=csv`) with the row model's fields as columns; nested values
    become JSON text in their cell."""
    ((key, field),) = type(page).model_fields.items()
    if not wants_csv(request):
        return Response(page.model_dump_json(), media_type="application/json")
    (row_model,) = get_args(field.annotation)
    columns = list(row_model.model_fields)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in page.model_dump(mode="json")[key]:
        writer.writerow(
            json.dumps(row[c]) if isinstance(row[c], dict | list) else row[c] for c in columns
        )
    return Response(
        out.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{key}.csv"'},
    )
