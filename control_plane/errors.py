"""API errors in the Databricks wire shape: `{"error_code", "message", "details"}`.

Services raise these; `install_error_handlers` turns them (and FastAPI's validation errors)
into JSON with the matching status. The SDK maps by `error_code` to its typed exceptions.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.orm.exc import StaleDataError
from starlette.exceptions import HTTPException as StarletteHTTPException

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

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(ApiError("internal error; see the server log").body(), status_code=500)
