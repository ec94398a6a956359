"""Errors in Google's shape, `{"error": {"code", "message", "status"}}`, as Perspective answers them.

Every refusal goes through here, including FastAPI's own (malformed JSON, a wrong
field, an unknown path), so a Perspective client's error handling keeps working.
Messages name the field and never repeat the comment text.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from agile.serve.models import Error

log = logging.getLogger("agile.serve")

STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
          405: "METHOD_NOT_ALLOWED", 413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
          503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}

RESPONSES = {code: {"model": Error} for code in (400, 401, 403, 429, 500, 503, 504)}  # for the OpenAPI document


class ApiError(Exception):
    def __init__(self, code: int, message: str, status: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.code, self.message = code, message
        self.status = status or STATUS.get(code, "UNKNOWN")
        self.headers = headers or {}


def error_response(exc: ApiError) -> JSONResponse:
    body = {"error": {"code": exc.code, "message": exc.message, "status": exc.status}}
    return JSONResponse(body, status_code=exc.code, headers=exc.headers)


def _validation_message(exc: RequestValidationError) -> str:
    """Google's wording for a body it cannot read, with where (never what) the fault is."""
    parts = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            return "Invalid JSON payload received: the body is not valid JSON."
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        if err.get("type") == "extra_forbidden":
            parts.append(f'Unknown name "{loc.rsplit(".", 1)[-1]}" at \'{loc}\'')
        elif err.get("type") == "missing":
            parts.append(f"'{loc}' is required")
        else:
            parts.append(f"'{loc or 'body'}': {err.get('msg', 'invalid value')}")
    return "Invalid JSON payload received. " + "; ".join(parts[:5])


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        from agile.serve.keys import key_error  # the body is read before the key dependency runs

        return error_response(key_error(request) or ApiError(400, _validation_message(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: f"The requested URL {request.url.path} was not found on this server.",
                   405: f"Method {request.method} is not allowed on {request.url.path}."}
        return error_response(ApiError(exc.status_code, message.get(exc.status_code, str(exc.detail))))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return error_response(ApiError(500, f"internal error ({type(exc).__name__}); see the server log"))
