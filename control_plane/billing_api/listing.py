"""What every billing listing shares: who may see which workspaces, ISO 8601 time ranges,
plain text filters, and the JSON or CSV rendering of typed rows (`schemas`: Decimals as
strings, never floats).

A time is ISO 8601 with a zone (`Z` or an offset such as `+02:00`, normalised to UTC), or a
date alone (its midnight UTC); anything else is a 400 that says so. A filter no stored value
could equal (too long, or holding NUL or a lone surrogate, which PostgreSQL refuses with an
error) is a 400 before it reaches the database."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, get_args

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

from billing.ledger.models import ID_LENGTH
from control_plane.auth import Caller
from control_plane.errors import InvalidParameter, PermissionDenied
from control_plane.text import UNSTORABLE


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
    plain_filter("workspace_id", workspace_id, ID_LENGTH)
    if caller.is_account_admin:
        return Scope(caller.account_id, workspace_id)
    if not caller.is_workspace_admin:
        raise PermissionDenied("billing data is for workspace and account admins")
    if workspace_id not in (None, caller.workspace_id):
        raise PermissionDenied("workspace admins see their own workspace's billing only")
    return Scope(caller.account_id, caller.workspace_id)


TIME_FORMAT = (
    "ISO 8601 with a time zone, e.g. 2026-11-26T14:00:00Z or 2026-11-26T16:00:00+02:00, "
    "or a date alone (2026-11-26: its midnight UTC)"
)
_TIME_CHARS = re.compile(r"[0-9A-Za-z:.,+\- ]{1,64}")


def parse_time(value: str | None, name: str) -> datetime | None:
    """`value` in UTC (see the module's docstring), or a 400 naming `name` and the format."""
    if value is None:
        return None
    if not _TIME_CHARS.fullmatch(value):  # nothing ISO 8601 has: not worth repeating
        raise InvalidParameter(f"{name} must be {TIME_FORMAT}")
    try:
        return datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)  # Python >= 3.11: 'Z' included
    except ValueError:
        hint = " (send a '+' in a query string as %2B)" if " " in value else ""
        raise InvalidParameter(f"{name} must be {TIME_FORMAT}; got {value!r}{hint}") from None
    if parsed.tzinfo is None:
        raise InvalidParameter(
            f"{name} needs a time zone: {value}Z (UTC) or an offset such as {value}+02:00"
        )
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+02:00 is in year 0 in UTC
        raise InvalidParameter(
            f"{name} {value!r} is out of range: in UTC it must fall between "
            "0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z"
        ) from None


def time_range(start: str | None, end: str | None) -> tuple[datetime | None, datetime | None]:
    start_time, end_time = parse_time(start, "start_time"), parse_time(end, "end_time")
    if start_time and end_time and end_time <= start_time:
        raise InvalidParameter("end_time must be after start_time")
    return start_time, end_time


def storable(value: str, max_length: int) -> bool:
    """Whether a column of `max_length` characters could hold `value`."""
    return len(value) <= max_length and not UNSTORABLE.search(value)


def plain_filter(name: str, value: str | None, max_length: int) -> None:
    """A filter no stored value could equal is a 400, before it reaches the database (which
    would refuse a NUL with an error)."""
    if value is not None and not storable(value, max_length):
        raise InvalidParameter(
            f"{name} must be at most {max_length} characters, without NUL or lone surrogates"
        )


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
