"""API errors in the Databricks wire shape: `{"error_code", "message", "details"}`.

Services raise these; `install_error_handlers` turns them (and FastAPI's validation errors)
into JSON with the matching status. The SDK maps by `error_code` to its typed exceptions.
Anything else raised while answering is `UnhandledErrors`' (ASGI middleware): a JSON 500
`INTERNAL_ERROR` carrying only a request id, the traceback logged once under that id, and
the client's keep-alive connection left open.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm.exc import StaleDataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)


class ApiError(Exception):
    status_code = 500
    error_code = "INTERNAL_ERROR"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error_code": self.error_code, "message": self.message, "details": []}


class InvalidParameter(ApiError):
    status_code = 400
    error_code = "INVALID_PARAMETER_VALUE"


class BadRequest(ApiError):
    status_code = 400
    error_code = "BAD_REQUEST"


class Unauthenticated(ApiError):
    status_code = 401
    error_code = "UNAUTHENTICATED"


class PermissionDenied(ApiError):
    status_code = 403
    error_code = "PERMISSION_DENIED"


class NotFound(ApiError):
    status_code = 404
    error_code = "RESOURCE_DOES_NOT_EXIST"


class AlreadyExists(ApiError):
    status_code = 409
    error_code = "RESOURCE_ALREADY_EXISTS"


class Conflict(ApiError):
    status_code = 409
    error_code = "RESOURCE_CONFLICT"


class RequestLimitExceeded(ApiError):
    status_code = 429
    error_code = "REQUEST_LIMIT_EXCEEDED"


class TemporarilyUnavailable(ApiError):
    status_code = 503
    error_code = "TEMPORARILY_UNAVAILABLE"


REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_INFO = "type.googleapis.com/google.rpc.RequestInfo"


class InternalError(ApiError):
    """A failure no handler answered. The client learns nothing of it but a request id to
    quote (in `details`, as Databricks' `RequestInfo`, and the X-Request-Id header); the
    server's log has the traceback under the same id."""

    def __init__(self, request_id: str) -> None:
        super().__init__(
            f"internal error; the server log has its details under request id {request_id}",
            headers={REQUEST_ID_HEADER: request_id},
        )
        self.request_id = request_id

    def body(self) -> dict[str, Any]:
        info = {"@type": _REQUEST_INFO, "request_id": self.request_id, "serving_data": ""}
        return {**super().body(), "details": [info]}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(InvalidParameter(_validation_message(exc)).body(), status_code=400)

    @app.exception_handler(StaleDataError)
    async def _raced(_: Request, exc: StaleDataError) -> JSONResponse:
        # Two requests changed one resource at once and this one lost (e.g. tags patched
        # while the endpoint was being deleted): nothing was written; the client re-reads.
        error = Conflict("the resource was changed or deleted by another request; re-read it")
        return error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error: ApiError
        if exc.status_code == 404:
            error = NotFound(f"no such route: {exc.detail}")
        elif exc.status_code == 405:
            error = BadRequest("method not allowed on this route")
            error.status_code = 405
        else:
            error = ApiError(str(exc.detail))
            error.status_code = exc.status_code
        return JSONResponse(error.body(), status_code=error.status_code)


class UnhandledErrors:
    """ASGI middleware, to be the outermost of the app's own (so it wraps every other one,
    the query door included): an exception nothing else answered becomes `InternalError`,
    a JSON 500, and its traceback is logged once with the request id.

    It answers here rather than through an `Exception` handler: Starlette runs that handler
    in its outermost layer and then re-raises, for the server to log; uvicorn logs it a
    second time and closes the connection, so a keep-alive client lost its connection to
    a 500 without a word. A response already started cannot turn into a 500: its exception
    goes on, and the server ends the connection, the only way left to tell the client that
    the body is cut (uvicorn logs that one). A database that cannot be reached for the
    moment (`OperationalError`: a restart, a failover, a lock timeout) is a 503 with
    Retry-After instead, logged in one line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except OperationalError as exc:
            if started:
                raise
            # The database is unreachable or refused for now (a restart, a failover, a lock
            # timeout): nothing was acknowledged, and the same request will work shortly.
            log.warning(
                "database unavailable answering %s %r: %s",
                scope.get("method"),
                scope.get("path"),
                type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__,
            )
            unavailable = TemporarilyUnavailable(
                "the service's database is unavailable for a moment; retry shortly",
                headers={"Retry-After": "1"},
            )
            await error_response(unavailable)(scope, receive, send)
        except Exception as exc:
            if started:
                raise
            error = InternalError(uuid.uuid4().hex)
            log.error(
                "unhandled error answering %s %r; request id %s",
                scope.get("method"),
                scope.get("path"),
                error.request_id,
                exc_info=exc,
            )
            await error_response(error)(scope, receive, send)
