"""The HTTP edge of the error tree: every failure becomes OpenAI's error body.

``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`` with the status the
exception class carries (``distillguard.errors``). Validation errors are the client's (400,
naming the field); anything unexpected is a 500 whose message hides internals, and is the
only case that means a bug.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from distillguard.errors import DistillGuardError, InputError, RateLimited
from distillguard.wire.openai import error_body

log = logging.getLogger("distillguard.gateway")

_HTTP_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


_SERVER_SIDE_MESSAGES = {
    "UpstreamError": "the model server failed to answer; retry later",
    "StoreError": "the service is temporarily unavailable; retry later",
    "ConfigError": "the service is misconfigured; contact the operator",
    "ModelError": "the model failed to answer; retry later",
}


@dataclass(frozen=True)
class ErrorResponse:
    """What goes on the wire for one failure."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    message: str  # for the exchange log's `error` column


class RequestTimeout(DistillGuardError):
    """The client did not finish sending its body within ``request_timeout_s``."""

    status_code = 408
    error_type = "timeout_error"


class MethodNotAllowed(InputError):
    """A known path asked with the wrong HTTP method."""

    status_code = 405

    def __init__(self, message: str):
        super().__init__(message, code="method_not_allowed")


class ClientGone(Exception):
    """The client disconnected before its request body was complete (nothing to answer)."""


def _validation_message(exc: ValidationError | RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request body", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    param = ".".join(loc) or None
    message = first.get("msg", "invalid value")
    if param:
        message = f"{param}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return message, param


def to_error_response(exc: BaseException) -> ErrorResponse:
    """Translate any exception into the response the client sees."""
    headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
    if isinstance(exc, DistillGuardError):
        status = exc.status_code
        message = exc.message
        # A server-side failure's details (upstream and Redis addresses, database errors) go
        # to the log only; the client learns what failed and that it may retry.
        shown = _SERVER_SIDE_MESSAGES.get(type(exc).__name__, message) if status >= 500 else message
        body = error_body(shown, exc.error_type, param=exc.param, code=exc.code)
        if isinstance(exc, RateLimited):
            # Whole seconds, rounded up, as HTTP wants; the exact value in a second header.
            seconds = max(1, int(-(-exc.retry_after // 1)))
            headers.append((b"retry-after", str(seconds).encode()))
            headers.append((b"retry-after-ms", str(int(exc.retry_after * 1000)).encode()))
            headers.extend(exc.headers)
    elif isinstance(exc, (ValidationError, RequestValidationError)):
        status = 400
        message, param = _validation_message(exc)
        body = error_body(message, "invalid_request_error", param=param, code="invalid_value")
    elif isinstance(exc, StarletteHTTPException):
        status = exc.status_code
        message = str(exc.detail)
        body = error_body(message, _HTTP_TYPES.get(status, "invalid_request_error"))
        for name, value in (exc.headers or {}).items():
            headers.append((name.lower().encode(), value.encode()))
    else:
        log.exception("unexpected error", exc_info=exc)
        status = 500
        message = f"internal error ({type(exc).__name__})"
        body = error_body("internal server error", "server_error")
    return ErrorResponse(status, body, tuple(headers), message)


def install_handlers(app: FastAPI) -> None:
    """One handler for every error the FastAPI routes (admin, models, ops) can raise."""

    async def handle(request: Request, exc: Exception) -> Response:
        err = to_error_response(exc)
        return Response(
            err.body,
            status_code=err.status,
            headers={k.decode(): v.decode() for k, v in err.headers},
        )

    app.add_exception_handler(DistillGuardError, handle)
    app.add_exception_handler(RequestValidationError, handle)
    app.add_exception_handler(ValidationError, handle)
    app.add_exception_handler(StarletteHTTPException, handle)
    app.add_exception_handler(Exception, handle)
