"""HTTP conventions shared by the services: JSON errors, body limits, bearer tokens.

Every error leaves a service as ``{"error": "<code>", "detail": "<human text>"}``;
401s also carry an RFC 6750 challenge: ``WWW-Authenticate: Bearer realm="apex",
error="invalid_token"`` when a credential was presented and refused (the specific reason,
e.g. ``token_expired``, stays in the JSON body), ``Bearer realm="apex"`` with no error
code when none was sent (RFC 6750 section 3.1). Bad input is always a 4xx, and an
infrastructure outage a 503, never a bare 500.
"""

from __future__ import annotations

import asyncio
import email.message
import hmac
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

import asyncpg
import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apex.common.challenges import bearer_challenge

__all__ = [
    "MAX_AUTHORIZATION_LENGTH",
    "MAX_BODY_BYTES",
    "ApiError",
    "BodyLimitMiddleware",
    "bearer_token",
    "error_response",
    "install_error_handlers",
    "require_admin_token",
    "require_json_body",
]

log = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 64 * 1024
# Our JWTs are about 1 KiB; anything far beyond that is not a token we issued.
MAX_AUTHORIZATION_LENGTH: Final = 4096

_STATUS_CODES: Final[Mapping[int, str]] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}


class ApiError(Exception):
    """An error answer: raise it from an endpoint or a dependency."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})
        # Fields of the body beside error and detail (e.g. a plan limit's, 402).
        self.extra = dict(extra or {})


def error_response(
    status: int,
    code: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> JSONResponse:
    """The JSON error body every service answers with (``extra``: further fields); a 401
    without a challenge of its own gets the RFC 6750 one for a refused credential."""
    all_headers = dict(headers or {})
    if status == 401:
        all_headers.setdefault("WWW-Authenticate", bearer_challenge())
    body = {**(extra or {}), "error": code, "detail": detail}
    return JSONResponse(body, status_code=status, headers=all_headers)


def install_error_handlers(app: FastAPI) -> None:
    """Turn every exception an app can raise into the JSON error shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for exc_type in _UNAVAILABLE:
        app.add_exception_handler(exc_type, _unavailable)
    app.add_exception_handler(Exception, _internal_error)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, ApiError):  # pragma: no cover - registered for ApiError only
        raise exc
    return error_response(exc.status, exc.code, exc.detail, exc.headers, exc.extra)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, RequestValidationError):  # pragma: no cover
        raise exc
    errors = exc.errors()
    if any(error.get("type") == "json_invalid" for error in errors):
        return error_response(400, "malformed_json", "the request body is not valid JSON")
    return error_response(422, "invalid_request", describe_validation_errors(errors))


def describe_validation_errors(errors: Sequence[Mapping[str, Any]]) -> str:
    """``field: message`` per problem; the input is never echoed (it may be a secret)."""
    lines = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ()) if part != "body"]
        where = ".".join(loc) or "body"
        lines.append(f"{where}: {error.get('msg', 'invalid value')}")
    return "; ".join(lines) or "invalid request"


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, StarletteHTTPException):  # pragma: no cover
        raise exc
    code = _STATUS_CODES.get(exc.status_code, "error")
    detail = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, detail, exc.headers)


# Raised when PostgreSQL or Redis is down or too slow: the caller should retry, and
# /healthz already says which dependency is failing.
_UNAVAILABLE: Final[tuple[type[Exception], ...]] = (
    asyncpg.PostgresConnectionError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    asyncio.TimeoutError,
)


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning(
        "dependency unavailable during %s %s: %s",
        request.method,
        request.url.path,
        type(exc).__name__,
    )
    return error_response(503, "unavailable", "a backing service is unavailable; retry later")


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, RuntimeError) and "handler is closed" in str(exc):
        # uvloop's answer to writing on a connection the peer dropped (e.g. Redis went
        # away mid-request); redis-py does not convert it to a ConnectionError.
        return await _unavailable(request, exc)
    log.exception("unhandled error during %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal server error")


async def require_json_body(request: Request) -> None:
    """Dependency: a request that carries a body must declare it as JSON (else 415)."""
    content_type = request.headers.get("content-type")
    if content_type is None:
        # No body at all is left to the body validation ("field required").
        if (
            request.headers.get("content-length", "0") == "0"
            and "transfer-encoding" not in request.headers
        ):
            return
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    if message.get_content_maintype() != "application" or not (
        subtype == "json" or subtype.endswith("+json")
    ):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send the body as application/json, not {content_type[:100]!r}",
        )


def bearer_token(request: Request, *, code: str = "invalid_token") -> str:
    """The token of an ``Authorization: Bearer <token>`` header, or a 401 ApiError with ``code``.

    No header, or another scheme, is a request without Bearer credentials: its challenge
    carries no error code (RFC 6750 section 3.1)."""
    header = request.headers.get("authorization")
    if header is None:
        raise ApiError(
            401,
            code,
            "missing Authorization: Bearer header",
            headers={"WWW-Authenticate": bearer_challenge(None)},
        )
    if len(header) > MAX_AUTHORIZATION_LENGTH:
        raise ApiError(
            401, code, f"Authorization header longer than {MAX_AUTHORIZATION_LENGTH} characters"
        )
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer":
        raise ApiError(
            401,
            code,
            "Authorization header must be 'Bearer <token>'",
            headers={"WWW-Authenticate": bearer_challenge(None)},
        )
    if not token:
        raise ApiError(401, code, "Authorization header must be 'Bearer <token>'")
    return token


class BodyLimitMiddleware:
    """Reject request bodies larger than ``max_bytes`` with 413 before an endpoint buffers them."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.max_bytes
            except ValueError:
                await self._reject(
                    scope, receive, send, 400, "bad_request", "invalid Content-Length header"
                )
                return
            if too_large:
                await self._reject(scope, receive, send, 413, "payload_too_large", self._detail())
                return

        received = 0

        async def counting_receive() -> Message:
            # Chunked bodies declare no length: count what actually arrives. An
            # HTTPException raised here reaches the app's exception handlers
            # (FastAPI re-raises it from its body reader).
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise StarletteHTTPException(413, self._detail())
            return message

        await self.app(scope, counting_receive, send)

    def _detail(self) -> str:
        return f"request body larger than {self.max_bytes} bytes"

    @staticmethod
    async def _reject(
        scope: Scope, receive: Receive, send: Send, status: int, code: str, detail: str
    ) -> None:
        await error_response(status, code, detail)(scope, receive, send)


def require_admin_token(request: Request, expected: str | None) -> None:
    """The admin routes (and /metrics) answer the platform's admin token only: 403 when
    the service has none (APEX_ADMIN_TOKEN unset), 401 for another token."""
    if not expected:
        raise ApiError(403, "forbidden", "the admin API needs APEX_ADMIN_TOKEN to be set")
    token = bearer_token(request)
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise ApiError(401, "invalid_token", "not the admin token")
