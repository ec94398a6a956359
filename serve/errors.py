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

RESPONSES = {code: {"model": Error} for code in (400, 401, 403, 413, 429, 500, 503, 504)}  # for the OpenAPI document


class ApiError(Exception):
    def __init__(self, code: int, message: str, status: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.code, self.message = code, message
        self.status = status or STATUS.get(code, "UNKNOWN")
        self.headers = headers or {}


class BodyTooLarge(StarletteHTTPException):
    """The request body passed AGILE_SERVE_MAX_BODY_BYTES (raised while it is read: FastAPI lets an
    HTTPException from the body through as it is)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"Request payload size exceeds the limit: {limit:,} bytes.")


def error_response(exc: ApiError) -> JSONResponse:
    body = {"error": {"code": exc.code, "message": exc.message, "status": exc.status}}
    return JSONResponse(body, status_code=exc.code, headers=exc.headers)


def _validation_message(exc: RequestValidationError, content_type: str | None) -> str:
    """Google's wording for a body it cannot read, with where (never what) the fault is."""
    parts = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            return "Invalid JSON payload received: the body is not valid JSON."
        if err.get("loc") == ("body",) and isinstance(err.get("input"), bytes):  # FastAPI left it unparsed
            sent = f"Content-Type {content_type[:100]!r}" if content_type else "no Content-Type"
            return f"Invalid JSON payload received: the body came with {sent}; expected 'application/json'."
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        if err.get("type") == "extra_forbidden":
            parts.append(f'Unknown name "{loc.rsplit(".", 1)[-1]}" at \'{loc}\'')
        elif err.get("type") == "missing":
            parts.append(f"'{loc}' is required")
        elif err.get("type") == "string_unicode":  # pydantic's word for a name or value holding "\ud800"
            parts.append(f"'{loc or 'body'}' holds a string that is not valid UTF-8 (an unpaired surrogate)")
        else:
            parts.append(f"'{loc or 'body'}': {err.get('msg', 'invalid value')}")
    return "Invalid JSON payload received. " + "; ".join(parts[:5])


def install(app: FastAPI) -> None:
    from agile.serve.keys import key_error  # keys imports this module; the body is read before its dependency

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message = _validation_message(exc, request.headers.get("content-type"))
        return error_response(key_error(request) or ApiError(400, message))

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return error_response(key_error(request) or ApiError(413, exc.detail))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: f"The requested URL {request.url.path} was not found on this server.",
                   405: f"Method {request.method} is not allowed on {request.url.path}."}
        return error_response(ApiError(exc.status_code, message.get(exc.status_code, str(exc.detail))))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return error_response(ApiError(500, f"internal error ({type(exc).__name__}); see the server log"))
