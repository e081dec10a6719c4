"""`GET /api/2.0/serving-endpoints/{name}/inference-log`: an endpoint's inference table read
back (a moeserve extension; Databricks writes the same facts to a Delta table). One row per
logged request: the request JSON and the response JSON as the client got them (a stream's
choices assembled, each choice apart), with the status, latency, token counts and client
request id of its usage row.

Who may read: `CAN_MANAGE` on the endpoint (payloads are the most sensitive data held), and
only the rows of requests made from the caller's own workspace — on a shared endpoint,
other workspaces' prompts are never shown. Pages follow Databricks list APIs (`page_size`,
`next_page_token`, a keyset cursor on (request_time, request id)). With `Accept:
application/x-ndjson` or `?format=jsonl` the answer is JSON Lines of every matching row,
read a page at a time and streamed, for export.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, sessionmaker

from billing.ledger import EndpointUsage
from billing.ledger.models import REQUEST_ID_LENGTH, InferenceLog
from control_plane.api.deps import EndpointsDep, PlaneDep
from control_plane.api.paging import PageCursor
from control_plane.auth import Level
from control_plane.billing_api.listing import time_range

router = APIRouter(prefix="/api/2.0/serving-endpoints", tags=["serving-endpoints"])

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1_000
JSON_LINES = "application/x-ndjson"


class InferenceRow(BaseModel):
    databricks_request_id: str
    client_request_id: str | None
    request_time: datetime
    status_code: int
    execution_duration_ms: int | None
    served_entity_id: str
    input_token_count: int
    output_token_count: int
    guardrail_hits: int | None = Field(
        default=None, description="matches of the endpoint's guardrails; null: none"
    )
    guardrail_outcome: str | None = Field(
        default=None, description="INPUT_BLOCKED, OUTPUT_BLOCKED or MASKED; null: none"
    )
    request: Any = Field(description="the request JSON; text when it was cut to the size cap")
    response: Any = Field(
        default=None,
        description="the answer's JSON as sent (a stream: its choices' text by index); text "
        "when cut to the size cap; null when nothing was answered",
    )
    request_truncated: bool
    response_truncated: bool


class InferencePage(BaseModel):
    rows: list[InferenceRow]
    next_page_token: str | None = Field(
        default=None, description="pass as page_token for the next page; absent on the last"
    )


class _Cursor(PageCursor):
    id: str = Field(min_length=1, max_length=REQUEST_ID_LENGTH)


PageSize = Annotated[
    int,
    Query(ge=1, le=MAX_PAGE_SIZE, description=f"rows per page (default {DEFAULT_PAGE_SIZE})"),
]


@router.get(
    "/{name}/inference-log",
    response_model=InferencePage,
    responses={200: {"content": {JSON_LINES: {"schema": {"type": "string"}}}}},
)
def inference_log(
    name: str,
    request: Request,
    endpoints: EndpointsDep,
    plane: PlaneDep,
    start_time: str | None = None,
    end_time: str | None = None,
    page_size: PageSize = DEFAULT_PAGE_SIZE,
    page_token: str | None = None,
) -> Response:
    endpoint, _ = endpoints.by_name(name, Level.CAN_MANAGE)
    start, end = time_range(start_time, end_time)
    after = None if page_token is None else _Cursor.of(page_token)
    scope = _Scope(endpoint.id, endpoints.caller.workspace_id, start, end)
    if _wants_lines(request):
        return StreamingResponse(
            _lines(plane.sessions, scope, after),
            media_type=JSON_LINES,
            headers={"Content-Disposition": f'attachment; filename="{name}-inference-log.jsonl"'},
        )
    rows, next_token = _page(endpoints.session, scope, after, page_size)
    page = InferencePage(rows=rows, next_page_token=next_token)
    shown = page.model_dump_json(exclude={"next_page_token"} if next_token is None else None)
    return Response(shown, media_type="application/json")


@dataclass(frozen=True)
class _Scope:
    """The rows a caller may read: one endpoint's, of requests made from its workspace."""

    endpoint_id: str
    workspace_id: str
    start: datetime | None
    end: datetime | None

    def where(self) -> list[Any]:
        clauses: list[Any] = [
            InferenceLog.endpoint_id == self.endpoint_id,
            EndpointUsage.workspace_id == self.workspace_id,
        ]
        if self.start is not None:
            clauses.append(InferenceLog.request_time >= self.start)
        if self.end is not None:
            clauses.append(InferenceLog.request_time < self.end)
        return clauses


def _page(
    session: Session, scope: _Scope, after: _Cursor | None, size: int
) -> tuple[list[InferenceRow], str | None]:
    log, usage = InferenceLog, EndpointUsage
    query = (
        select(log, usage)
        .join(usage, usage.databricks_request_id == log.databricks_request_id)
        .where(*scope.where())
    )
    if after is not None:
        query = query.where(
            or_(
                log.request_time > after.t,
                and_(log.request_time == after.t, log.databricks_request_id > after.id),
            )
        )
    query = query.order_by(log.request_time, log.databricks_request_id).limit(size + 1)
    found = session.execute(query).all()
    rows = [_row(entry, used) for entry, used in found[:size]]
    next_token = None
    if len(found) > size:
        last = found[size - 1][0]
        next_token = _Cursor(t=last.request_time, id=last.databricks_request_id).token()
    return rows, next_token


def _lines(
    sessions: sessionmaker[Session], scope: _Scope, after: _Cursor | None
) -> Iterator[bytes]:
    """Every matching row as a JSON line, a page (and a short session) at a time."""
    while True:
        with sessions() as session:
            rows, token = _page(session, scope, after, MAX_PAGE_SIZE)
        for row in rows:
            yield (row.model_dump_json() + "\n").encode()
        if token is None:
            return
        after = _Cursor.of(token)


def _row(entry: InferenceLog, used: EndpointUsage) -> InferenceRow:
    return InferenceRow(
        databricks_request_id=entry.databricks_request_id,
        client_request_id=used.client_request_id,
        request_time=entry.request_time,
        status_code=entry.status_code,
        execution_duration_ms=used.execution_duration_ms,
        served_entity_id=entry.served_entity_id,
        input_token_count=used.input_token_count,
        output_token_count=used.output_token_count,
        guardrail_hits=used.guardrail_hits,
        guardrail_outcome=used.guardrail_outcome,
        request=_document(entry.request, entry.request_truncated),
        response=None
        if entry.response is None
        else _document(entry.response, entry.response_truncated),
        request_truncated=entry.request_truncated,
        response_truncated=entry.response_truncated,
    )


def _document(text: str, truncated: bool) -> Any:
    """The stored JSON, parsed; the text itself when it was cut (no longer JSON)."""
    if truncated:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _wants_lines(request: Request) -> bool:
    if request.query_params.get("format") == "jsonl":
        return True
    return JSON_LINES in request.headers.get("accept", "")
