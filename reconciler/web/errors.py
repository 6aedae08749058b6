"""Every error an HTTP client can get, mapped in one place, each naming the field and the rule.

    ValidationError / RequestValidationError  -> 422 (the field, the rule; nothing was written)
    a body that is not UTF-8                  -> 422 (like one that is not JSON)
    UnknownReference                          -> 409 (names a template the store does not have: valid in
                                                      itself, it succeeds once the template exists)
    InvalidRecord                             -> 422
    ApiError(status)                          -> its status (400 bad signature, 401, 403, 409, 503 ...)
    Conflict                                  -> 409
    NotFound                                  -> 404
    TransientError                            -> 503 (retry)
    PermanentError, FleetError                -> 422
    a method the path does not take           -> 405 with `Allow`: every method of every route of the path

A route raises one of these and never builds an error response itself. This module must never leak a
stack trace or a database message that names a table rather than a field.
"""

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from specs import FleetError, NotFound, PermanentError, TransientError
from state import Conflict, InvalidRecord
from state.errors import UnknownReference


class ErrorDetail(BaseModel):
    field: str
    rule: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    def __init__(self, status: int, field: str, rule: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{field}: {rule}")
        self.status = status
        self.field = field
        self.rule = rule
        self.headers = headers


def error_response(status: int, field: str, rule: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(field=field, rule=rule, message=f"{field}: {rule}"))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _rule(error: dict[str, Any]) -> str:
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "is required"
    if kind == "json_invalid":
        return "is not valid JSON"
    return str(error.get("msg", "is invalid")).removeprefix("Value error, ")


def _field(location: tuple[Any, ...] | list[Any], *, request_part: bool) -> str:
    parts = list(location)
    if request_part and parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        where = parts.pop(0)
        if where != "body" and parts:
            return str(parts[0])  # the parameter, not the index of one of its values (?label=...&label=...)
        if not parts:
            return "body"
    return ".".join(str(part) for part in parts) or "body"


def describe(errors: list[dict[str, Any]], *, request_part: bool) -> tuple[str, str]:
    first = errors[0]
    field = _field(first.get("loc", ()), request_part=request_part)
    rule = _rule(first)
    more = len(errors) - 1
    if more:
        rule += f" (and {more} more problem{'s' if more > 1 else ''})"
    return field, rule


def validation_error(error: ValidationError, *, prefix: str = "") -> ApiError:
    field, rule = describe(list(error.errors()), request_part=False)  # type: ignore[arg-type]
    return ApiError(422, f"{prefix}{field}" if field != "body" or not prefix else prefix.rstrip("."), rule)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str:
    """The `Allow` header of a 405: every method some route takes at this path, not only the first route's
    (one path is often served by several routes, e.g. GET, PATCH and DELETE of a tenant)."""
    routes = request.app.router.routes
    return ", ".join(method for method in _METHODS
                     if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes))


def install(app: FastAPI) -> None:
    async def on_request_validation(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        field, rule = describe(list(error.errors()), request_part=True)
        return error_response(422, field, rule)

    async def on_validation(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, ValidationError)
        api = validation_error(error)
        return error_response(422, api.field, api.rule)

    async def on_api(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, ApiError)
        return error_response(error.status, error.field, error.rule, error.headers)

    async def on_invalid(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, InvalidRecord)
        return error_response(409 if isinstance(error, UnknownReference) else 422, error.field, error.rule)

    async def on_fleet(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, FleetError)
        field, _, rule = str(error).partition(": ")
        if not rule:
            field, rule = "request", str(error)
        if isinstance(error, Conflict):
            return error_response(409, field, rule)
        if isinstance(error, NotFound):
            return error_response(404, field, rule)
        if isinstance(error, TransientError):
            return error_response(503, "store", str(error), {"Retry-After": "1"})
        return error_response(422, field, rule)

    async def on_http(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        headers = dict(error.headers or {})
        if error.status_code == 405:
            headers["Allow"] = allowed_methods(request)
        if error.status_code == 400 and isinstance(error.__cause__, UnicodeDecodeError):
            return error_response(422, "body", "is not valid JSON (not UTF-8)")  # as FastAPI's json_invalid
        return error_response(error.status_code, "request", str(error.detail), headers)

    app.add_exception_handler(RequestValidationError, on_request_validation)
    app.add_exception_handler(ValidationError, on_validation)
    app.add_exception_handler(ApiError, on_api)
    app.add_exception_handler(InvalidRecord, on_invalid)
    app.add_exception_handler(FleetError, on_fleet)
    app.add_exception_handler(PermanentError, on_fleet)
    app.add_exception_handler(StarletteHTTPException, on_http)


__all__ = ["ApiError", "ErrorBody", "ErrorDetail", "error_response", "install", "validation_error"]
