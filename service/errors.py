"""One error shape for every failure: ``{"detail": "<what is wrong>", "code": "<machine code>"}``.

Bad input raises :class:`ApiError` with a 4xx status; FastAPI's own validation errors, unknown
routes and wrong methods are rewritten into the same shape; anything unexpected becomes a JSON 500
that says nothing about the internals (the traceback goes to the server log only).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("service")

ERROR_CODE_KEY = "infomax.error_code"  # scope key read by the metrics middleware


class ApiError(Exception):
    """A request the service refuses; ``message`` names the problem for the caller."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.errors = errors


class ErrorBody(BaseModel):
    detail: str
    code: str
    errors: list[dict[str, Any]] | None = None


# OpenAPI: the error responses every /v1 route may give
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorBody, "description": d}
    for s, d in {
        400: "malformed JSON or multipart body, not an image, truncated or empty image, bad base64",
        401: "API key missing or wrong",
        404: "unknown item id",
        413: "request body over max_upload_bytes, or image over max_image_pixels",
        415: "Content-Type other than application/json or multipart/form-data",
        422: "a field is invalid: k out of range, vector of wrong dimension or not finite...",
        503: "model and index not loaded (yet)",
    }.items()
}

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "not_ready",
}


def error_response(
    request: Request | None,
    status: int,
    code: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    errors: list | None = None,
) -> JSONResponse:
    if request is not None:
        request.scope[ERROR_CODE_KEY] = code
    body = ErrorBody(detail=message, code=code, errors=errors).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)


def _loc(loc: tuple) -> str:
    # ("body", "k") -> "k"; ("query", "n") -> "n"
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "request"


def describe_validation_errors(errors: Sequence[Mapping[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Pydantic errors -> ("k: Input should be ...; vector.3: ...", JSON-safe list)."""
    clean = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))} for e in errors
    ]
    message = "; ".join(f"{_loc(tuple(e['loc']))}: {e['msg']}" for e in clean[:5])
    if len(clean) > 5:
        message += f" (and {len(clean) - 5} more)"
    return message or "invalid request", clean


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.status, exc.code, exc.message, headers=exc.headers, errors=exc.errors)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(request, 400, "invalid_json", "malformed JSON body")
        message, clean = describe_validation_errors(errors)
        return error_response(request, 422, "invalid_request", message, errors=clean)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}"
        return error_response(request, exc.status_code, code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Installed into Starlette's ServerErrorMiddleware: the caller gets JSON without a
        # traceback; the server log keeps the traceback for whoever runs it.
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(request, 500, "internal_error", "internal server error")
